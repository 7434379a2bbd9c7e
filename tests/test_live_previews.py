"""Live previews (issue 17): a running task's small animated WebP, made by the tiny LTX-2 engine in a
real worker, stored, recorded, streamed as a ``preview`` event and served by
``GET /api/v1/tasks/{id}/preview`` (SDK, CLI) to its owner only, kept while its result is kept;
a profile with previews off makes none, and previews never change the video."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from reelgen import service
from reelgen.attempt import Worker
from reelgen.cli import main
from reelgen.client import Client
from reelgen.domain import TaskStatus
from reelgen.engines.base import Engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.livepreview import LivePreview, Previews, Publisher, parse_previews, preview_key
from reelgen.profiles import get_profile
from reelgen.store import previews, tasks
from reelgen.sweeper import purge_previews
from tests.api_fixtures import LiveServer
from tests.factories import Account, generate_body, make_account
from tests.test_api import assert_error

STILL_PROFILES = """
[ltx-2-tiny-every3]
extends = "ltx-2-tiny"
previews = { enabled = true, every = 3, frames = 3, max_side = 96 }

[ltx-2-tiny-still]
extends = "ltx-2-tiny"
previews = { enabled = false }
"""


@pytest.fixture
def rich(ctx: service.Context) -> Account:
    return make_account(ctx, credits=10_000, name="rich")


def _webp(data: bytes) -> tuple[tuple[int, int], int]:
    """(size, frame count) of a WebP, decoding every frame."""
    with Image.open(io.BytesIO(data), formats=["WEBP"]) as image:
        frames = 0
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.convert("RGB").load()
            frames += 1
        return image.size, frames


def _events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    event: str | None = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event is not None:
            yield event, json.loads(line[6:])
            event = None


@pytest.fixture
def workers(ctx: service.Context, tiny_engine: Engine) -> Iterator[Callable[..., Worker]]:
    """Workers in this process on the session's tiny engine and the test's database and storage."""
    made: list[Worker] = []

    def make(worker_id: str, **overrides: Any) -> Worker:
        worker = Worker(ctx.settings.model_copy(update=overrides), device="cpu", worker_id=worker_id)
        worker.load(engine=tiny_engine)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.db.dispose()


def _claim(ctx: service.Context, worker_id: str, profile: str | None = None) -> tasks.TaskRow:
    now = datetime.now(UTC)
    row = ctx.db.run(
        lambda conn: tasks.claim(conn, worker_id=worker_id, lease_seconds=60, now=now, profile=profile),
        immediate=True,
    )
    assert row is not None
    return row


# ---------------------------------------------------------------- a real run, end to end
def test_a_running_task_streams_its_preview_and_keeps_it_while_the_result_is_kept(
    live_api: LiveServer,
    ctx: service.Context,
    rich: Account,
    workers: Callable[..., Worker],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = ctx.profile.previews
    assert spec.enabled  # on by default in ltx-2-tiny
    worker = workers("w-preview")
    with httpx.Client(base_url=live_api.url, headers=rich.headers, timeout=60) as c:
        task_id = c.post("/api/v1/generate", json=generate_body()).json()["data"]["id"]
        assert_error(c.get(f"/api/v1/tasks/{task_id}/preview"), 404, "NO_PREVIEW")  # none before the run
        got: list[tuple[str, Any]] = []
        with c.stream("GET", f"/api/v1/tasks/{task_id}/events") as r:
            stream = _events(r.iter_lines())
            got.append(next(stream))  # pending
            runner = threading.Thread(target=worker.run_attempt, args=(_claim(ctx, "w-preview"),))
            runner.start()
            try:
                got += list(stream)  # ends after the terminal status
            finally:
                runner.join(timeout=300)
        kinds = [kind for kind, _ in got]
        assert kinds[-1] == "status" and got[-1][1]["status"] == "completed", kinds
        shown = [data for kind, data in got if kind == "preview"]
        assert shown, kinds
        # the last preview is announced before the terminal status; versions only move forward
        assert kinds.index("preview") < len(kinds) - 1
        assert [p["version"] for p in shown] == sorted({p["version"] for p in shown})
        last = shown[-1]
        job_steps = ctx.profile.mode("standard").total_steps
        assert last["taskId"] == task_id and last["totalSteps"] == job_steps
        assert last["step"] == ctx.profile.mode("standard").stages[0].steps  # after stage 1
        assert last["url"].startswith(f"{live_api.url}/api/v1/tasks/{task_id}/preview")
        assert last["contentType"] == "image/webp"

        # the stated small size, decodable, every frame
        r = c.get(last["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        size, frames = _webp(r.content)
        assert size == (last["width"], last["height"]) and frames == last["frames"] == spec.frames
        assert max(size) <= spec.max_side
        assert abs(size[0] / size[1] - 16 / 9) < 0.1  # the output's aspect ratio (128x72 here)

        # completed: still served, through the SDK and the CLI too
        assert c.get(f"/api/v1/tasks/{task_id}").json()["data"]["status"] == "completed"
        with Client(api_key=rich.key, base_url=live_api.url) as sdk:
            assert sdk.preview(task_id) == r.content
        out = tmp_path / "preview.webp"
        server = ["--server", live_api.url, "--api-key", rich.key]
        assert main(["tasks", "preview", task_id, "-o", str(out), *server]) == 0
        assert out.read_bytes() == r.content
        capsys.readouterr()

        # the result deleted: its preview goes with it (the sweeper removes the object)
        assert c.delete(f"/v1/videos/{task_id}").status_code == 200
        assert_error(c.get(f"/api/v1/tasks/{task_id}/preview"), 404, "NO_PREVIEW")
    found = ctx.db.run(lambda conn: previews.get(conn, task_id))
    assert found is not None and ctx.storage.exists(found.info.key)
    assert purge_previews(ctx.db, ctx.storage) == 1
    assert not ctx.storage.exists(found.info.key)
    assert ctx.db.run(lambda conn: previews.get(conn, task_id)) is None


# ---------------------------------------------------------------- the route's rules
def _publish(ctx: service.Context, row: tasks.TaskRow, shade: int) -> None:
    """What the worker does with one preview: encode, store, record (fenced on the attempt)."""
    frames = np.full((2, 40, 64, 3), shade, dtype=np.uint8)
    frames[1] = 255 - shade  # two different frames (the encoder merges a repeated one)
    publisher = Publisher(ctx.db, ctx.storage, row.id, row.attempt)
    publisher(LivePreview(frames=frames, step=4, total=11, fps=1.0))
    publisher.close()


def test_preview_route_owner_only_and_gone_when_the_task_ends_without_a_result(
    client: TestClient, ctx: service.Context, rich: Account
) -> None:
    other = make_account(ctx, credits=1000, name="other")
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
    url = f"/api/v1/tasks/{task_id}/preview"
    assert_error(client.get(url, headers=rich.headers), 404, "NO_PREVIEW")
    assert_error(client.get(url), 401, "MISSING_AUTH_HEADER")

    row = _claim(ctx, "w1")
    _publish(ctx, row, shade=10)
    r = client.get(url, headers=rich.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert _webp(r.content) == ((64, 40), 2)
    # another account's task answers exactly like an unknown one, preview or not
    foreign = client.get(url, headers=other.headers)
    assert_error(foreign, 404, "TASK_NOT_FOUND")
    assert foreign.json() == client.get(f"/api/v1/tasks/{'0' * 32}/preview", headers=other.headers).json()
    assert client.get(f"/api/v1/tasks/{'0' * 32}/preview", headers=rich.headers).json()["error"]["code"] == (
        "TASK_NOT_FOUND"
    )

    _publish(ctx, row, shade=200)  # a newer preview replaces it under the same key
    assert client.get(url, headers=rich.headers).content != r.content
    assert ctx.db.run(lambda conn: previews.get(conn, task_id)).seq == 2  # type: ignore[union-attr]

    assert client.post(f"/api/v1/tasks/{task_id}/cancel", headers=rich.headers).status_code == 200
    assert_error(client.get(url, headers=rich.headers), 404, "NO_PREVIEW")
    # the attempt, told of the cancel only at its next step, records nothing more
    before = ctx.db.run(lambda conn: previews.get(conn, task_id))
    _publish(ctx, row, shade=90)
    assert ctx.db.run(lambda conn: previews.get(conn, task_id)) == before
    assert purge_previews(ctx.db, ctx.storage) == 1
    assert not ctx.storage.exists(preview_key(task_id, row.attempt))


def test_openapi_documents_the_preview_route(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/v1/tasks/{task_id}/preview"]["get"]
    assert "image/webp" in op["responses"]["200"]["content"]
    assert {"401", "404"} <= set(op["responses"])


# ---------------------------------------------------------------- on and off
def test_previews_never_change_the_video_and_a_profile_with_them_off_makes_none(
    ctx: service.Context, rich: Account, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    profiles_file = tmp_path / "profiles.toml"
    profiles_file.write_text(STILL_PROFILES)
    every3 = get_profile("ltx-2-tiny-every3", profiles_file).previews
    assert every3 == Previews(enabled=True, every=3, frames=3, max_side=96)
    results: dict[str, bytes] = {}
    for profile in ("ltx-2-tiny-every3", "ltx-2-tiny-still"):
        task_id = service.submit(ctx, rich.id, generate_body(seed=1234))["id"]
        ctx.db.run(lambda conn, t=task_id, p=profile: _move_to_profile(conn, t, p), immediate=True)
        worker = workers(f"w-{profile}", profile=profile, profiles_file=profiles_file)
        worker.run_attempt(_claim(ctx, f"w-{profile}", profile))
        row = ctx.db.run(lambda conn, t=task_id: tasks.get(conn, t))
        assert row is not None and row.status == TaskStatus.COMPLETED, row
        assert row.result_key is not None
        with ctx.storage.open(row.result_key) as f:
            results[profile] = f.read()
        found = ctx.db.run(lambda conn, t=task_id: previews.get(conn, t))
        if profile == "ltx-2-tiny-still":
            assert found is None
            assert not ctx.storage.exists(preview_key(task_id, row.attempt))
            continue
        # standard: 8 + 3 steps; every 3rd step and the end of stage 1, never the last stage's end
        assert found is not None and found.seq == 4 and found.info.step == 9 and found.info.total_steps == 11
        with ctx.storage.open(found.info.key) as f:
            size, frames = _webp(f.read())
        assert size == (found.info.width, found.info.height) and frames == 3 and max(size) <= 96
    assert results["ltx-2-tiny-every3"] == results["ltx-2-tiny-still"]  # bit for bit


def _move_to_profile(conn: Any, task_id: str, profile: str) -> None:
    from sqlalchemy import update

    from reelgen.store.tables import tasks as table

    conn.execute(update(table).where(table.c.id == task_id).values(profile=profile))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"enabled": "yes"}, "previews.enabled must be true or false"),
        ({"every": -1}, "previews.every -1"),
        ({"frames": 0}, "previews.frames 0"),
        ({"max_side": 4096}, "previews.max_side 4096"),
        ({"fps": 4}, "unknown key(s) ['fps']"),
    ],
)
def test_bad_preview_settings_are_refused_when_the_profile_is_read(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ReelgenError) as caught:
        parse_previews("p", raw)
    assert caught.value.code == ErrorCode.INVALID_PROFILE and message in caught.value.message
