"""``/v1/videos`` (OpenAI Videos API shape) through the official ``openai`` SDK's videos resource,
against the real server on a socket with its tiny-engine worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from reelgen import media, service
from reelgen.store import ledger, tasks, webhooks
from reelgen.store.tables import movements
from tests.api_fixtures import LiveServer
from tests.factories import Account, generate_body, make_account

# the SDK marks the Videos resource deprecated (OpenAI retired Sora); the shape lives on in gateways
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def sdk(url: str, account: Account) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=account.key, max_retries=0, timeout=60)


def png(w: int = 160, h: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def balance(ctx: service.Context, account: Account) -> ledger.Balance:
    return ctx.db.run(lambda conn: ledger.balance(conn, account.id))


def movement_count(ctx: service.Context, account: Account) -> int:
    stmt = select(func.count()).select_from(movements).where(movements.c.account_id == account.id)
    return int(ctx.db.run(lambda conn: conn.execute(stmt).scalar_one()))


@pytest.fixture
def owner(ctx: service.Context) -> Account:
    return make_account(ctx, credits=5000, name="owner")


def test_sdk_create_poll_content_list_remix_delete(
    live: LiveServer, ctx: service.Context, owner: Account, tmp_path: Path
) -> None:
    client = sdk(live.url, owner)
    video = client.videos.create(prompt="a red fox runs through snow", model="sora-2", seconds="3", size="1280x720")  # type: ignore[arg-type]
    assert video.object == "video" and video.status == "queued" and video.model == "sora-2"
    assert video.size == "1280x720" and video.seconds == "3" and video.progress == 0
    # the same task through /api/v1: text-to-video, 16:9, standard, with audio; 3 s x 42 = 126 held
    task = httpx.get(f"{live.url}/api/v1/tasks/{video.id}", headers=owner.headers).json()["data"]
    assert task["model"] == "kling-3-0-text-to-video" and task["creditsUsed"] == 126
    assert balance(ctx, owner).reserved == 126

    done = client.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert done.progress == 100 and done.completed_at is not None and done.completed_at >= done.created_at
    assert done.error is None and done.remixed_from_video_id is None

    mp4 = tmp_path / "out.mp4"
    client.videos.download_content(video.id).write_to_file(mp4)
    info = media.probe(mp4)
    assert info.has_audio and abs(info.duration - 3.0) <= 1 / 24 + 1e-6

    thumb = client.videos.download_content(video.id, variant="thumbnail").content
    image = Image.open(io.BytesIO(thumb))
    assert image.format == "WEBP" and image.size == (info.width, info.height)
    sheet = client.videos.download_content(video.id, variant="spritesheet").content
    grid = Image.open(io.BytesIO(sheet))
    assert grid.format == "JPEG" and grid.width == 4 * info.width and grid.height == 3 * info.height
    # made once, then served from storage unchanged
    assert client.videos.download_content(video.id, variant="thumbnail").content == thumb

    page = client.videos.list(limit=10)
    assert [v.id for v in page.data] == [video.id] and page.has_more is False and page.last_id == video.id

    remix = client.videos.remix(video.id, prompt="the same fox, now at night")
    assert remix.remixed_from_video_id == video.id and remix.size == "1280x720" and remix.model == "sora-2"
    rows = {row.id: row for row in ctx.db.run(lambda conn: [tasks.get(conn, video.id), tasks.get(conn, remix.id)])}
    assert rows[remix.id].seed == rows[video.id].seed
    assert {k: v for k, v in rows[remix.id].input.items() if k != "prompt"} == {
        k: v for k, v in rows[video.id].input.items() if k != "prompt"
    }
    assert client.videos.poll(remix.id, poll_interval_ms=200).status == "completed"

    newest_first = client.videos.list()
    assert [v.id for v in newest_first.data] == [remix.id, video.id]
    oldest_first = client.videos.list(order="asc", limit=1)
    assert [v.id for v in oldest_first.data] == [video.id] and oldest_first.has_more
    assert [v.id for v in client.videos.list(order="asc", after=video.id).data] == [remix.id]

    before = movement_count(ctx, owner)
    deleted = client.videos.delete(video.id)
    assert deleted.deleted is True and deleted.object == "video.deleted" and deleted.id == video.id
    with pytest.raises(openai.NotFoundError) as err:
        client.videos.retrieve(video.id)
    assert err.value.body["code"] == "task_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(video.id)
    assert [v.id for v in client.videos.list().data] == [remix.id]
    # the ledger keeps its entries; /api/v1 still shows the (paid) task, without a result
    assert movement_count(ctx, owner) == before
    assert balance(ctx, owner) == ledger.Balance(available=5000 - 252, reserved=0, captured=252, granted=5000)
    task = httpx.get(f"{live.url}/api/v1/tasks/{video.id}", headers=owner.headers).json()["data"]
    assert task["status"] == "completed" and task["result"] is None and task["creditsUsed"] == 126
    gone = httpx.get(f"{live.url}/api/v1/tasks/{video.id}/download", headers=owner.headers)
    assert gone.status_code == 409 and gone.json()["error"]["message"] == "The task's result was deleted."
    assert ctx.db.run(ledger.check) == []


def test_input_reference_as_file_url_and_file_id(live: LiveServer, ctx: service.Context, owner: Account) -> None:
    client = sdk(live.url, owner)
    with_file = client.videos.create(
        prompt="the lake wakes up", seconds="3", input_reference=("start.png", png(), "image/png")
    )
    uploaded = httpx.post(
        f"{live.url}/api/v1/upload", headers=owner.headers, files={"file": ("a.png", png(), "image/png")}
    ).json()["data"]
    # a reference object travels as JSON (the SDK's create only sends files)
    raw = httpx.Client(base_url=live.url, headers=owner.headers, timeout=30)
    created = raw.post(
        "/v1/videos",
        json={"prompt": "the lake at dusk", "seconds": "3", "input_reference": {"file_id": uploaded["id"]}},
    )
    with_id = client.videos.retrieve(created.json()["id"])
    for video in (with_file, with_id):
        task = httpx.get(f"{live.url}/api/v1/tasks/{video.id}", headers=owner.headers).json()["data"]
        assert task["model"] == "kling-3-0-image-to-video"
    done = client.videos.poll(with_file.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert client.videos.poll(with_id.id, poll_interval_ms=200).status == "completed"
    # an image URL the server cannot fetch: accepted, then failed with the fetch error, released
    created = raw.post(
        "/v1/videos",
        json={
            "prompt": "from a url",
            "seconds": "3",
            "input_reference": {"image_url": f"{live.url}/no-such-image.png"},
        },
    )
    by_url = client.videos.retrieve(created.json()["id"])
    failed = client.videos.poll(by_url.id, poll_interval_ms=200)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "image_fetch_failed" and failed.error.message
    assert balance(ctx, owner).reserved == 0 and balance(ctx, owner).captured == 2 * 126
    raw.close()


# --------------------------------------------------------------------------------------------
# Errors: OpenAI's envelope on these routes only, and nothing charged (no worker needed)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def api(client: TestClient, owner: Account) -> Iterator[TestClient]:
    client.headers.update(owner.headers)
    yield client


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"prompt": "x", "size": "640x480"}, 400, "invalid_input", "size"),
        ({"prompt": "x", "size": 1280}, 400, "invalid_input", "size"),
        ({"prompt": "x", "seconds": " 4"}, 400, "invalid_input", "seconds"),
        ({"prompt": "x", "input_reference": None}, 400, "invalid_input", "input_reference"),
        ({"prompt": "x", "model": "dall-e"}, 400, "invalid_model", "model"),
        ({"prompt": "x", "seconds": "four"}, 400, "invalid_input", "seconds"),
        ({"prompt": "x", "seconds": "99"}, 400, "invalid_input", "seconds"),
        ({"prompt": "x", "sizes": "1280x720"}, 400, "invalid_input", "sizes"),
        ({"prompt": "   "}, 400, "missing_prompt", None),
        ({"prompt": "x" * 2501}, 400, "invalid_input", "prompt"),
        (
            {"prompt": "x", "input_reference": {"image_url": "ftp://example.com/a.png"}},
            400,
            "invalid_input",
            "input_reference",
        ),
        ({"prompt": "x", "input_reference": {"file_id": "0" * 32}}, 400, "invalid_input", "input_reference"),
        ({"prompt": "x", "input_reference": 7}, 400, "invalid_input", "input_reference"),
    ],
)
def test_bad_input_gets_openai_error_and_charges_nothing(
    api: TestClient,
    ctx: service.Context,
    owner: Account,
    body: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
) -> None:
    r = api.post("/v1/videos", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["param"] == param
    assert "input." not in error["message"] and error["message"]
    assert balance(ctx, owner) == ledger.Balance(available=5000, reserved=0, captured=0, granted=5000)
    assert movement_count(ctx, owner) == 1  # the grant


def test_auth_credits_not_found_and_json_errors(api: TestClient, ctx: service.Context) -> None:
    poor = make_account(ctx, credits=10, name="poor")
    r = api.post("/v1/videos", json={"prompt": "x"}, headers={"Authorization": f"Bearer {poor.key}"})
    assert r.status_code == 402 and r.json()["error"]["type"] == "insufficient_quota"
    assert r.json()["error"]["code"] == "insufficient_credits" and "Required: 168" in r.json()["error"]["message"]
    assert balance(ctx, poor).reserved == 0
    r = api.get("/v1/videos", headers={"Authorization": "Bearer sk-" + "x" * 43})
    error = r.json()["error"]
    assert r.status_code == 401 and error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None and error["message"]
    assert api.get("/v1/videos", headers={"Authorization": ""}).json()["error"]["code"] == "missing_auth_header"
    r = api.get("/v1/videos/" + "0" * 32)
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    assert (
        api.post("/v1/videos", content=b"{", headers={"Content-Type": "application/json"}).json()["error"]["code"]
        == "invalid_json"
    )
    r = api.get("/v1/videos", params={"limit": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    r = api.get("/v1/videos", params={"order": "sideways"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "order"
    r = api.get("/v1/videos", params={"after": "0" * 32})
    assert r.status_code == 404 and r.json()["error"]["param"] == "after" and "after" in r.json()["error"]["message"]
    r = api.put("/v1/videos/abc")
    assert (
        r.status_code == 405
        and r.headers["allow"] == "DELETE, GET"
        and r.json()["error"]["code"] == "method_not_allowed"
    )
    r = api.get("/v1/videos/abc/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # the other doors keep their own envelope
    r = api.get("/api/v1/tasks/" + "0" * 32)
    assert r.json()["success"] is False and r.json()["error"]["code"] == "TASK_NOT_FOUND"


def test_queued_video_cannot_be_deleted_or_remixed_and_webhook_is_openai_shaped(
    api: TestClient, ctx: service.Context
) -> None:
    video = api.post(
        "/v1/videos", json={"prompt": "a quiet harbour", "seconds": 3, "callback_url": "http://127.0.0.1:9/hook"}
    )
    assert video.status_code == 200, video.text
    vid = video.json()["id"]
    r = api.delete(f"/v1/videos/{vid}")
    assert (
        r.status_code == 409 and r.json()["error"]["code"] == "no_result" and "cancel" in r.json()["error"]["message"]
    )
    r = api.post(f"/v1/videos/{vid}/remix", json={"prompt": "again"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_result"
    r = api.post(f"/v1/videos/{vid}/remix", json={"prompt": "again", "seed": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert api.get(f"/v1/videos/{vid}/content").status_code == 409
    # cancelled through /api/v1: a failed video, its hold released, and the OpenAI-shaped event owed
    assert api.post(f"/api/v1/tasks/{vid}/cancel").status_code == 200
    failed = api.get(f"/v1/videos/{vid}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "cancelled"
    (delivery,) = ctx.db.run(lambda conn: webhooks.list_for_task(conn, vid))
    body = json.loads(delivery.payload)
    assert delivery.event == "video.failed" and body["type"] == "video.failed" and body["object"] == "event"
    assert body["data"] == {"id": vid} and body["id"].startswith("evt_")
    assert api.delete(f"/v1/videos/{vid}").json() == {"id": vid, "object": "video.deleted", "deleted": True}
    assert api.delete(f"/v1/videos/{vid}").status_code == 404


def test_task_from_api_v1_is_a_video_too(api: TestClient) -> None:
    body = generate_body(duration=4, mode="professional", aspect_ratio="9:16")
    task = api.post("/api/v1/generate", json=body).json()["data"]
    video = api.get(f"/v1/videos/{task['id']}").json()
    assert video["model"] == "kling-3-0-text-to-video" and video["size"] == "1024x1792" and video["seconds"] == "4"
    assert video["status"] == "queued" and video["remixed_from_video_id"] is None


def test_idempotency_key_charges_once(api: TestClient, ctx: service.Context, owner: Account) -> None:
    first = api.post("/v1/videos", json={"prompt": "once"}, headers={"Idempotency-Key": "k-1"}).json()
    again = api.post("/v1/videos", json={"prompt": "once"}, headers={"Idempotency-Key": "k-1"}).json()
    assert first["id"] == again["id"] and balance(ctx, owner).reserved == 168
