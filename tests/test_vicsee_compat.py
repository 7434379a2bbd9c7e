"""Drop-in compatibility (issue 14), over HTTP on SQLite and PostgreSQL.

``VicSee`` below is a client written only from VicSee's documented behaviour, not from reelgen's
code: every answer is the envelope ``{success, data}`` / ``{success: false, error: {code,
message}}``; a local image goes up by the presign flow (``POST /api/v1/upload`` with
``{contentType, sizeBytes}``, then ``PUT uploadUrl`` with no key) and ``publicUrl`` goes in
``image_urls``; a task is polled until ``completed`` or ``failed`` (or until ``error`` is set),
and the video is ``result.url``. The tests then check what such a client, and a Kling user
sending Kling's own fields, meet: uploads, small task views, ``/models?type=``, the tools,
link lifetimes, cancellation, ``external_task_id``; and the SDK and CLI verbs the issue adds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgen import service
from reelgen.cli import main
from reelgen.client import Client
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.service.uploads import _sign
from reelgen.store import ledger, tasks, uploads
from reelgen.store.db import Database
from reelgen.sweeper import SLOT_PURGE_GRACE_SECONDS, purge_uploads
from reelgen.views import MAX_TASK_JSON_BYTES
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import Account, make_account
from tests.test_api import assert_error

T2V = "kling-3-0-text-to-video"
I2V = "kling-3-0-image-to-video"


class VicSeeError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class VicSee:
    """A client written from VicSee's docs alone (see the module docstring)."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        body = r.json()
        if body.get("success") is False:
            raise VicSeeError(r.status_code, body["error"]["code"], body["error"]["message"])
        return body["data"]

    def upload(self, data: bytes, content_type: str) -> str:
        slot = self.call("POST", "/api/v1/upload", json={"contentType": content_type, "sizeBytes": len(data)})
        assert set(slot) >= {"uploadUrl", "publicUrl", "key", "expiresAt"}
        # the documented PUT: straight to uploadUrl, no Authorization header
        r = httpx.put(slot["uploadUrl"], content=data, headers={"Content-Type": content_type}, timeout=60)
        assert r.is_success, r.text
        url: str = slot["publicUrl"]
        assert url.startswith(("http://", "https://"))
        return url

    def generate(self, model: str, inp: dict[str, Any]) -> str:
        return str(self.call("POST", "/api/v1/generate", json={"model": model, "input": inp})["id"])

    def wait(self, task_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task: dict[str, Any] = self.call("GET", f"/api/v1/tasks/{task_id}")
            if task["status"] in ("completed", "failed") or task.get("error"):
                return task
            time.sleep(0.3)
        raise AssertionError(f"task {task_id} still running after {timeout} s")


def png(w: int = 320, h: int = 200, *, noise: bool = False, fmt: str = "PNG") -> bytes:
    from PIL import Image

    img = Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)) if noise else Image.new("RGB", (w, h), (40, 90, 160))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _frame_difference(a: Path, b: Path) -> float:
    """The mean absolute difference (0-255) between two videos' decoded RGB frames."""
    import av
    import numpy as np

    def frames(path: Path) -> Any:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)

    return float(np.abs(frames(a) - frames(b)).mean())


@pytest.fixture
def vicsee() -> Iterator[Callable[[str, str], VicSee]]:
    """Makes ``VicSee`` clients and closes them after the test."""
    made: list[VicSee] = []

    def make(base_url: str, key: str) -> VicSee:
        made.append(VicSee(base_url, key))
        return made[-1]

    yield make
    for client in made:
        client.http.close()


@pytest.fixture
def acc(ctx: service.Context) -> Account:
    return make_account(ctx, credits=100_000, name="vicsee-user")


@pytest.fixture
def other(ctx: service.Context) -> Account:
    return make_account(ctx, credits=100_000, name="someone-else")


def _slot(live_api: LiveServer, acc: Account, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    r = httpx.post(
        f"{live_api.url}/api/v1/upload",
        json={"contentType": content_type, "sizeBytes": len(data)},
        headers=acc.headers,
    )
    assert r.status_code == 200, r.text
    slot: dict[str, Any] = r.json()["data"]
    return slot


# --------------------------------------------------------------------------------------------
# The whole journey, with workers: presign upload, Kling's fields, result.url, seeds, the SDK
# --------------------------------------------------------------------------------------------
def test_a_vicsee_client_and_a_kling_user_work_unchanged(
    vicsee: Callable[[str, str], VicSee], tmp_path: Path, db: Database
) -> None:
    # the operator default: private and loopback hosts refused, so publicUrl must resolve from storage
    ctx = make_ctx(make_settings(tmp_path, db, allow_private_image_hosts=False), db)
    acc = make_account(ctx, credits=100_000)
    image = png(200, 320)
    local = tmp_path / "start.png"
    local.write_bytes(image)
    kling = {"negative_prompt": "blur", "cfg_scale": 0.7, "seed": 1234}
    with LiveServer(ctx, start_executor=True) as live:
        vic = vicsee(live.url, acc.key)
        public = vic.upload(image, "image/png")
        task_id = vic.generate(
            I2V,
            {"prompt": "a lighthouse", "duration": 3, "image_urls": [public], "external_task_id": "order-1", **kling},
        )
        done = vic.wait(task_id)
        assert done["status"] == "completed", done["error"]
        assert done["error"] is None and done["externalTaskId"] == "order-1"
        video = httpx.get(done["result"]["url"], timeout=60)  # result.url needs no key
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        # the link lives 7 days by default, and says so
        link = vic.call("GET", f"/api/v1/tasks/{task_id}/download")
        expires = datetime.fromisoformat(link["expiresAt"].replace("Z", "+00:00"))
        assert timedelta(days=7) <= expires - datetime.now(UTC) <= timedelta(days=7, minutes=2)

        # external_task_id: unique per account, and the task is found by it
        with pytest.raises(VicSeeError) as dup:
            vic.generate(T2V, {"prompt": "again", "duration": 3, "external_task_id": "order-1"})
        assert (dup.value.status, dup.value.code) == (409, "DUPLICATE_EXTERNAL_TASK_ID")
        found = vic.call("GET", "/api/v1/tasks", params={"external_task_id": "order-1"})["tasks"]
        assert [t["id"] for t in found] == [task_id]

        # the SDK: a local path goes up by the presign flow; wait follows the event stream (no polling)
        def no_polling(seconds: float) -> None:
            raise AssertionError("wait polled although the event stream was offered")

        with Client(acc.key, base_url=live.url, sleep=no_polling) as sdk:
            outputs = []
            for name, seed in (("second", 1234), ("third", 1234), ("other", 99)):
                again = sdk.generate(
                    I2V, prompt="a lighthouse", duration=3, image_urls=[local], **{**kling, "seed": seed}
                )
                finished = sdk.wait(again, timeout=300)
                assert finished.status == "completed"
                outputs.append(sdk.download(finished, tmp_path / f"{name}.mp4"))
            assert [t.id for t in sdk.list(limit=5).tasks][3] == task_id
    # the same seed and input give the same video on the same hardware; a CPU shared with other
    # work may round a few operations differently (a shade on a few pixels), another seed is
    # another video
    same, other = _frame_difference(outputs[0], outputs[1]), _frame_difference(outputs[0], outputs[2])
    assert same < 1.0 and other > 5.0, (same, other)
    assert ctx.db.run(ledger.check) == []


def test_links_that_never_expire_survive_restarts(
    vicsee: Callable[[str, str], VicSee], tmp_path: Path, db: Database
) -> None:
    settings = make_settings(tmp_path, db, download_url_ttl_seconds=0)
    ctx = make_ctx(settings, db)
    acc = make_account(ctx, credits=100_000)
    with LiveServer(ctx, start_executor=True) as live:
        vic = vicsee(live.url, acc.key)
        done = vic.wait(vic.generate(T2V, {"prompt": "a quiet lake", "duration": 3, "audio": False}))
        assert done["status"] == "completed", done["error"]
        link = vic.call("GET", f"/api/v1/tasks/{done['id']}/download")
        assert link["expiresAt"] is None  # as VicSee's
        url = done["result"]["url"]
    with LiveServer(make_ctx(settings, db), start_executor=False) as again:
        assert httpx.get(url.replace(live.url, again.url)).status_code == 200
    # an operator who gives links a lifetime again ends the never-expiring ones
    limited = make_ctx(make_settings(tmp_path, db, download_url_ttl_seconds=3600), db)
    with LiveServer(limited, start_executor=False) as later:
        assert_error(httpx.get(url.replace(live.url, later.url)), 403, "INVALID_TOKEN")


# --------------------------------------------------------------------------------------------
# Presigned uploads: signed, single use, expiring, bound to type and size, owner-only
# --------------------------------------------------------------------------------------------
def test_presigned_upload_rules(live_api: LiveServer, ctx: service.Context, acc: Account, other: Account) -> None:
    data = png()
    slot = _slot(live_api, acc, data)
    put_url = slot["uploadUrl"]
    assert slot["publicUrl"].startswith(live_api.url + "/api/v1/uploads/")
    # bound to the declared size and type: a mismatch stores nothing and leaves the link usable
    assert_error(httpx.put(put_url, content=data + b"x", headers={"Content-Type": "image/png"}), 400, "INVALID_INPUT")
    assert_error(httpx.put(put_url, content=data, headers={"Content-Type": "image/jpeg"}), 400, "INVALID_INPUT")
    upload_id = slot["publicUrl"].rsplit("/", 1)[1]
    assert ctx.db.run(lambda c: uploads.get(c, upload_id)) is None
    assert_error(httpx.get(slot["publicUrl"], headers=acc.headers), 409, "NO_RESULT")  # no bytes yet
    assert_error(httpx.get(slot["publicUrl"], headers=other.headers), 404, "NOT_FOUND")
    wrong = assert_error(httpx.delete(slot["publicUrl"], headers=acc.headers), 405, "METHOD_NOT_ALLOWED")
    assert wrong is not None
    assert httpx.delete(slot["publicUrl"]).headers["allow"] == "GET, PUT"
    assert not ctx.storage.exists(uploads.storage_key(upload_id))
    # signed: a forged token, or a link past its expiry, is refused
    forged = put_url.rsplit("token=", 1)[0] + "token=" + "A" * 32
    assert_error(httpx.put(forged, content=data), 403, "INVALID_TOKEN")
    past = int(time.time()) - 10
    expired = f"{live_api.url}/api/v1/uploads/{upload_id}?expires={past}&token={_sign(ctx, upload_id, past)}"
    assert_error(httpx.put(expired, content=data), 403, "INVALID_TOKEN")
    # the documented PUT (no key) stores it; a second PUT of the same link is refused
    stored = httpx.put(put_url, content=data, headers={"Content-Type": "image/png"})
    assert stored.status_code == 200, stored.text
    assert_error(httpx.put(put_url, content=data, headers={"Content-Type": "image/png"}), 403, "INVALID_TOKEN")
    # publicUrl: the image for its owner, nothing for anyone else
    mine = httpx.get(slot["publicUrl"], headers=acc.headers)
    assert mine.status_code == 200 and mine.content == data and mine.headers["content-type"] == "image/png"
    assert_error(httpx.get(slot["publicUrl"], headers=other.headers), 404, "NOT_FOUND")
    assert_error(httpx.get(slot["publicUrl"]), 401, "MISSING_AUTH_HEADER")
    body = {"model": I2V, "input": {"prompt": "p", "duration": 3, "image_urls": [slot["publicUrl"]]}}
    assert_error(httpx.post(f"{live_api.url}/api/v1/generate", json=body, headers=other.headers), 400, "INVALID_INPUT")
    accepted = httpx.post(f"{live_api.url}/api/v1/generate", json=body, headers=acc.headers)
    assert accepted.status_code == 200, accepted.text
    task = httpx.get(f"{live_api.url}/api/v1/tasks/{accepted.json()['data']['id']}", headers=acc.headers).json()
    assert task["data"]["input"]["image_urls"] == [uploads.url_for(upload_id)]  # read from storage, never fetched


def test_presign_requests_are_validated(live_api: LiveServer, acc: Account) -> None:
    url = f"{live_api.url}/api/v1/upload"

    def presign(body: Any) -> httpx.Response:
        return httpx.post(url, json=body, headers=acc.headers)

    assert_error(presign({"contentType": "image/gif", "sizeBytes": 10}), 400, "INVALID_INPUT")
    assert_error(presign({"contentType": "image/png", "sizeBytes": 0}), 400, "INVALID_INPUT")
    assert_error(presign({"contentType": "image/png", "sizeBytes": "10"}), 400, "INVALID_INPUT")
    assert_error(presign({"contentType": "image/png"}), 400, "INVALID_INPUT")
    assert_error(presign({"contentType": "image/png", "sizeBytes": 10**12}), 400, "INVALID_INPUT")
    assert_error(presign([1]), 400, "INVALID_JSON")
    assert_error(httpx.post(url, json={"contentType": "image/png", "sizeBytes": 10}), 401, "MISSING_AUTH_HEADER")
    # the bytes must be the declared type: a JPEG declared as PNG, and something that is no image
    jpeg = png(fmt="JPEG")
    slot = _slot(live_api, acc, jpeg, "image/png")
    assert_error(httpx.put(slot["uploadUrl"], content=jpeg), 400, "INVALID_INPUT")
    junk = b"not an image at all"
    slot = _slot(live_api, acc, junk, "image/jpg")
    assert_error(httpx.put(slot["uploadUrl"], content=junk), 400, "INVALID_INPUT")
    # a publicUrl whose bytes never came is no upload
    body = {"model": I2V, "input": {"prompt": "p", "duration": 3, "image_urls": [slot["publicUrl"]]}}
    err = assert_error(
        httpx.post(f"{live_api.url}/api/v1/generate", json=body, headers=acc.headers), 400, "INVALID_INPUT"
    )
    assert "no such upload" in err["message"]


def test_unfinished_and_unused_uploads_are_purged(
    vicsee: Callable[[str, str], VicSee], live_api: LiveServer, ctx: service.Context, acc: Account
) -> None:
    vic = vicsee(live_api.url, acc.key)
    unused = vic.upload(png(), "image/png")
    used = vic.upload(png(), "image/png")
    vic.generate(I2V, {"prompt": "p", "duration": 3, "image_urls": [used]})
    unfinished = _slot(live_api, acc, png())
    now = datetime.now(UTC)
    # within the retention (24 h by default) nothing goes
    assert purge_uploads(ctx.db, ctx.storage, ctx.settings, now).unused_uploads == 0
    later = now + timedelta(seconds=ctx.settings.upload_retention_seconds + SLOT_PURGE_GRACE_SECONDS + 60)
    report = purge_uploads(ctx.db, ctx.storage, ctx.settings, later)
    assert (report.unused_uploads, report.expired_slots) == (1, 1)
    unused_id, used_id = unused.rsplit("/", 1)[1], used.rsplit("/", 1)[1]
    assert not ctx.storage.exists(uploads.storage_key(unused_id))
    assert_error(httpx.get(unused, headers=acc.headers), 404, "NOT_FOUND")
    assert ctx.storage.exists(uploads.storage_key(used_id))  # a task named it: kept
    assert httpx.get(used, headers=acc.headers).status_code == 200
    assert ctx.db.run(lambda c: uploads.get_slot(c, unfinished["publicUrl"].rsplit("/", 1)[1])) is None
    assert_error(httpx.put(unfinished["uploadUrl"], content=png()), 403, "INVALID_TOKEN")


# --------------------------------------------------------------------------------------------
# Task views, models, tools
# --------------------------------------------------------------------------------------------
def test_task_views_never_echo_large_inputs(
    vicsee: Callable[[str, str], VicSee], live_api: LiveServer, acc: Account
) -> None:
    raw = png(1000, 800, noise=True)
    assert len(raw) > 2_000_000
    import base64

    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    heavy = "\x01" * 2500  # 6 bytes each in JSON
    shots = [{"prompt": heavy, "duration": 1} for _ in range(15)]
    vic = vicsee(live_api.url, acc.key)
    task_id = vic.generate(
        I2V,
        {
            "prompt": heavy,
            "duration": 15,
            "image_urls": [uri, "https://example.com/" + "a" * 100_000],
            "negative_prompt": heavy,
            "multi_shots": True,
            "multi_prompt": shots,
        },
    )
    r = vic.http.get(f"/api/v1/tasks/{task_id}")
    assert len(r.content) < MAX_TASK_JSON_BYTES, len(r.content)
    shown = r.json()["data"]["input"]["image_urls"][0]
    assert shown.startswith("<data:image/png, ") and f"{len(raw)} bytes" in shown
    assert hashlib.sha256(raw).hexdigest()[:12] in shown
    page = vic.http.get("/api/v1/tasks", params={"limit": 1})
    assert len(page.content) < MAX_TASK_JSON_BYTES


def test_models_by_type_and_the_tools(vicsee: Callable[[str, str], VicSee], live_api: LiveServer, acc: Account) -> None:
    vic = vicsee(live_api.url, acc.key)
    assert vic.call("GET", "/api/v1/models", params={"type": "image"}) == []
    assert vic.call("GET", "/api/v1/models", params={"type": "music"}) == []
    videos = vic.call("GET", "/api/v1/models", params={"type": "video"})
    assert {m["id"] for m in videos} == {T2V, I2V, "kling-3-0-video-extend"}
    kling = [m for m in videos if m["id"] in (T2V, I2V)]
    assert all({"negative_prompt", "cfg_scale", "seed", "external_task_id"} <= set(m["inputs"]) for m in kling)
    with pytest.raises(VicSeeError) as bad:
        vic.call("GET", "/api/v1/models", params={"type": "speech"})
    assert bad.value.status == 400 and all(t in json.dumps(bad.value.args) for t in ("video", "image", "music"))
    for tool in ("upscale-image", "upscale-video"):
        with pytest.raises(VicSeeError) as refused:
            vic.call("POST", f"/api/v1/tools/{tool}", json={"url": "https://example.com/a.png"})
        assert (refused.value.status, refused.value.code) == (501, "NOT_SUPPORTED")
        assert T2V in refused.value.message
    assert_error(httpx.post(f"{live_api.url}/api/v1/tools/upscale-image"), 401, "MISSING_AUTH_HEADER")


# --------------------------------------------------------------------------------------------
# Cancellation: terminal, and says why, to a VicSee client, the SDK and the CLI
# --------------------------------------------------------------------------------------------
def test_cancelled_tasks_are_terminal_everywhere(
    vicsee: Callable[[str, str], VicSee], live_api: LiveServer, acc: Account
) -> None:
    vic = vicsee(live_api.url, acc.key)
    task_id = vic.generate(T2V, {"prompt": "never runs", "duration": 3})
    with Client(acc.key, base_url=live_api.url) as sdk:
        cancelled = sdk.cancel(task_id)
        assert cancelled.status == "cancelled"
        assert sdk.cancel(task_id).status == "cancelled"  # cancelling again changes nothing
        with pytest.raises(ReelgenError) as waited:
            sdk.wait(task_id, timeout=30)
        assert waited.value.code == ErrorCode.TASK_FAILED and "CANCELLED" in waited.value.message
        assert [t.status for t in sdk.list(status="cancelled").tasks] == ["cancelled"]
    task = vic.wait(task_id, timeout=10)  # the loop "until completed or failed" ends on error
    assert task["status"] == "cancelled"
    assert task["error"]["code"] == "CANCELLED" and task["error"]["key"] == "cancelled" and task["error"]["message"]
    server = ["--server", live_api.url, "--api-key", acc.key]
    assert main(["tasks", "wait", task_id, "--timeout", "30", *server]) != 0
    assert main(["tasks", "list", "--status", "cancelled", *server]) == 0


def test_cli_upload_list_and_cancel(
    live_api: LiveServer, acc: Account, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(png())
    server = ["--server", live_api.url, "--api-key", acc.key]
    assert main(["upload", str(image), *server]) == 0
    public = capsys.readouterr().out.strip()
    assert httpx.get(public, headers=acc.headers).content == image.read_bytes()
    assert main(["generate", "a boat", "--image", str(image), "--duration", "3", "--no-wait", *server]) == 0
    task_id = capsys.readouterr().out.strip().splitlines()[0]
    assert main(["tasks", "list", "--json", *server]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["tasks"][0]["id"] == task_id
    assert listed["tasks"][0]["input"]["image_urls"][0].startswith("reelgen-upload://")  # uploaded, not inlined
    assert main(["tasks", "cancel", task_id, "--json", *server]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"


# --------------------------------------------------------------------------------------------
# Kling's own fields
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("negative_prompt", "x" * 2501),
        ("negative_prompt", 5),
        ("cfg_scale", 1.5),
        ("cfg_scale", -0.1),
        ("cfg_scale", True),
        ("cfg_scale", "0.5"),
        ("seed", -1),
        ("seed", 2**31),
        ("seed", 1.5),
        ("external_task_id", ""),
        ("external_task_id", "has space"),
        ("external_task_id", "x" * 129),
        ("callback_url", "ftp://example.com/hook"),
    ],
)
def test_kling_fields_are_validated(live_api: LiveServer, acc: Account, field: str, value: Any) -> None:
    body = {"model": T2V, "input": {"prompt": "p", "duration": 3, field: value}}
    err = assert_error(
        httpx.post(f"{live_api.url}/api/v1/generate", json=body, headers=acc.headers), 400, "INVALID_INPUT"
    )
    assert any(field in d["field"] for d in err.get("details", [])), err


def test_kling_fields_reach_the_task(
    vicsee: Callable[[str, str], VicSee], live_api: LiveServer, ctx: service.Context, acc: Account
) -> None:
    vic = vicsee(live_api.url, acc.key)
    before = vic.call("GET", "/api/v1/credits")["credits"]
    task_id = vic.generate(
        T2V,
        {
            "prompt": "p",
            "duration": 5,
            "seed": 77,
            "callback_url": "https://example.com/hook",
            "external_task_id": "kling-77",
        },
    )
    assert before - vic.call("GET", "/api/v1/credits")["credits"] == 5 * 42  # prices do not change
    row = ctx.db.run(lambda c: tasks.get(c, task_id))
    assert row is not None
    assert (row.seed, row.callback_url, row.external_task_id) == (77, "https://example.com/hook", "kling-77")
    # one external_task_id per account, not per server
    other = make_account(ctx, credits=1000, name="other")
    assert vicsee(live_api.url, other.key).generate(T2V, {"prompt": "p", "duration": 3, "external_task_id": "kling-77"})
    assert vic.call("GET", "/api/v1/tasks", params={"external_task_id": "nope"})["tasks"] == []


def test_kling_fields_reach_the_plan() -> None:
    from reelgen.planning import cfg_range, plan
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    profile = get_profile("ltx-2-tiny")
    pro = profile.mode("professional").stages[0].full_guidance()

    def stage1(**fields: Any) -> Any:
        job = plan(GenerateInput(prompt="p", duration=3, mode="professional", **fields), profile, seed=9)
        return job.segments[0]

    # cfg_scale 0.5 (Kling's default) is the profile's own guidance; 0 and 1 the ends of its range
    assert stage1(cfg_scale=0.5).stages[0].guidance == pro
    for knob in ("guidance_scale", "audio_guidance_scale"):
        low, high = cfg_range(pro[knob])
        assert stage1(cfg_scale=0.0).stages[0].guidance[knob] == pytest.approx(low)
        assert stage1(cfg_scale=1.0).stages[0].guidance[knob] == pytest.approx(high)
        assert 1 < low < pro[knob] < high
    assert stage1().negative_prompt == profile.negative_prompt
    assert stage1(negative_prompt="text, logos").negative_prompt == "text, logos"
    assert stage1(seed=5).seed == 9  # the task's seed (submit takes the request's) seeds the plan
    # the distilled standard mode runs no classifier-free guidance: nothing to move
    std = plan(GenerateInput(prompt="p", duration=3, cfg_scale=1.0, negative_prompt="x"), profile, seed=9)
    assert std.segments[0].negative_prompt is None
    assert std.segments[0].stages[0].guidance["guidance_scale"] == 1.0
