"""End to end on the embedded default: the real server on a socket, its worker subprocess, the tiny engine."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest

from reelgen import media, service
from reelgen.store import ledger
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import Account, generate_body, make_account


def wait_terminal(c: httpx.Client, task_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen_progress = set()
    while time.monotonic() < deadline:
        data: dict[str, Any] = c.get(f"/api/v1/tasks/{task_id}").json()["data"]
        seen_progress.add(data["progress"])
        if data["status"] in ("completed", "failed", "cancelled"):
            data["_seen_progress"] = seen_progress
            return data
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")


def png_data_uri(w: int = 320, h: int = 200) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def owner(ctx: service.Context) -> Account:
    return make_account(ctx, credits=2000, name="owner")


def test_text_to_video_end_to_end(live: LiveServer, ctx: service.Context, owner: Account, tmp_path: Any) -> None:
    other = make_account(ctx, credits=1000, name="other")
    with httpx.Client(base_url=live.url, headers=owner.headers, timeout=30) as c:
        sub = c.post("/api/v1/generate", json=generate_body(duration=3, audio=True)).json()["data"]
        task = wait_terminal(c, sub["id"])
        assert task["status"] == "completed", task["error"]
        assert task["progress"] == 100 and task["creditsUsed"] == 126
        assert task["startedAt"] and task["completedAt"]
        assert task["output"]["hasAudio"] is True and task["output"]["format"] == "mp4"
        assert abs(task["output"]["duration"] - 3.0) <= 1 / 24 + 1e-6
        assert task["result"] == {"url": task["output"]["url"], "type": "video"}
        assert task["result"]["url"].startswith(live.url + "/api/v1/files/")

        # signed link: no key needed
        url = c.get(f"/api/v1/tasks/{sub['id']}/download").json()["data"]["url"]
        raw = httpx.get(url).content
        path = tmp_path / "out.mp4"
        path.write_bytes(raw)
        info = media.probe(path)
        assert (info.width, info.height) == (128, 72) and info.has_audio
        assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6

        # proxy with Range
        proxied = c.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy")
        assert proxied.status_code == 200 and proxied.headers["content-type"] == "video/mp4"
        assert proxied.content == raw and int(proxied.headers["content-length"]) == len(raw)
        part = c.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == raw[10:20]

        # tampered link
        assert httpx.get(url.replace("token=", "token=x")).status_code == 403

        credits = c.get("/api/v1/credits").json()["data"]
        assert credits == {"credits": 2000 - 126, "reserved": 0}

    # the other account sees nothing of it
    with httpx.Client(base_url=live.url, headers=other.headers, timeout=30) as c2:
        assert c2.get(f"/api/v1/tasks/{sub['id']}").status_code == 404
        assert c2.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy").status_code == 404
    assert ctx.db.run(ledger.check) == []


def test_image_to_video_and_refused_image_host(tmp_path: Any, db: Any) -> None:
    # The operator default: private, loopback and link-local image hosts are refused.
    ctx = make_ctx(make_settings(tmp_path, db, allow_private_image_hosts=False), db)
    owner = make_account(ctx, credits=2000, name="owner")
    with (
        LiveServer(ctx, start_executor=True) as live,
        httpx.Client(base_url=live.url, headers=owner.headers, timeout=30) as c,
    ):
        ok = c.post(
            "/api/v1/generate",
            json=generate_body("kling-3-0-image-to-video", image_urls=[png_data_uri(200, 320)], audio=False),
        ).json()["data"]
        bad = c.post(
            "/api/v1/generate",
            json=generate_body("kling-3-0-image-to-video", image_urls=["http://169.254.169.254/latest/meta-data"]),
        ).json()["data"]
        done = wait_terminal(c, ok["id"])
        assert done["status"] == "completed", done["error"]
        assert done["output"]["hasAudio"] is False
        failed = wait_terminal(c, bad["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "IMAGE_FETCH_FAILED" and failed["error"]["key"] == "image_fetch_failed"
        assert failed["creditsUsed"] == 0
        credits = c.get("/api/v1/credits").json()["data"]
        assert credits == {"credits": 2000 - 84, "reserved": 0}
    assert ctx.db.run(ledger.check) == []
