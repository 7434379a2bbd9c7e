"""The SDK against the real server on a loopback socket (tiny profile), sync and async.

The whole path (generate, wait, download, a failed task) runs both clients against one server
with its worker; the ``connect`` fixture gives the error-path tests a ``Client`` or an
``AsyncClient`` driven through one event loop, so each of those bodies checks both. Only the last
section uses ``httpx.MockTransport``: it stands in for VicSee's hosted service, whose response
variants our own server never sends.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgen import AsyncClient, Client, ErrorCode, ReelgenError, Task, media, service
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from reelgen.store import ledger
from tests.api_fixtures import LiveServer, free_port, make_ctx, make_settings
from tests.factories import make_account

FAST = {"poll_interval": 0.2, "max_interval": 0.5}


class Blocking:
    """An ``AsyncClient`` called like a ``Client``: each coroutine runs to completion on one loop."""

    def __init__(self, client: AsyncClient) -> None:
        self._client, self._runner = client, asyncio.Runner()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._runner.run(method(*args, **kwargs))

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(key, base_url=..., **kw)`` -> a client of the parametrized flavour (closed afterwards)."""
    made: list[Any] = []

    def make(api_key: str | None, **kwargs: Any) -> Any:
        client: Any = Client(api_key, **kwargs) if request.param == "sync" else Blocking(AsyncClient(api_key, **kwargs))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def png_file(path: Path, w: int = 200, h: int = 320) -> Path:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (40, 120, 200)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def raises(code: ErrorCode, call: Callable[[], object]) -> ReelgenError:
    with pytest.raises(ReelgenError) as info:
        call()
    assert info.value.code == code, info.value
    return info.value


# ---------------------------------------------------------------------------------------------
# The whole path, both clients on one server: generate, wait (with progress), download, probe;
# a failed task; the balance
# ---------------------------------------------------------------------------------------------
async def async_flow(url: str, key: str, task_id: str, failed_id: str, tmp_path: Path) -> None:
    async with AsyncClient(key, base_url=url) as api:
        with pytest.raises(ReelgenError) as failed:
            await api.wait(failed_id, timeout=120, **FAST)
        assert failed.value.code == ErrorCode.TASK_FAILED and "IMAGE_FETCH_FAILED" in failed.value.message
        seen: list[Task] = []
        done = await api.wait(task_id, timeout=120, on_progress=seen.append, **FAST)
        assert done.is_completed and seen[-1] == done and done.output is not None and done.output.hasAudio
        again, balance = await asyncio.gather(api.get(task_id), api.credits())
        assert again.video_url == done.video_url and balance.reserved in (0, 126)
        out = await api.download(done, tmp_path / "async.mp4", proxy=True)
        info = media.probe(out)
        assert (info.width, info.height) == (128, 72) and info.has_audio
        assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6
        signed = await api.download(done, tmp_path / "async-signed.mp4")
        assert signed.read_bytes() == out.read_bytes()


# The SDK is database-blind and the worker costs seconds to start: SQLite here; the API-only tests
# below run on both backends.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_generate_wait_download_and_a_failed_task(tmp_path: Path, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator default: private, loopback and link-local image hosts are refused.
    ctx = make_ctx(make_settings(tmp_path, db, allow_private_image_hosts=False), db)
    owner = make_account(ctx, credits=1000)
    with LiveServer(ctx, start_executor=True) as live:
        monkeypatch.setenv("REELGEN_BASE_URL", live.url + "/api/v1/")  # from the env, API prefix tolerated
        monkeypatch.setenv("REELGEN_API_KEY", owner.key)
        api = Client()
        models = {m.id: m for m in api.models()}
        assert set(models) == {TEXT_TO_VIDEO, IMAGE_TO_VIDEO, "kling-3-0-video-extend"}
        assert models[IMAGE_TO_VIDEO].pricing["standard"].noAudio == 28

        # image-to-video from a local file (sent as a data URI), silent; one that must fail (the
        # address is refused by default); a text-to-video with audio for the async client
        start = png_file(tmp_path / "start.png")
        task = api.generate(IMAGE_TO_VIDEO, prompt="a blue card turns", image_urls=[start], duration=3, audio=False)
        bad = api.generate(
            IMAGE_TO_VIDEO, prompt="metadata", image_urls=["http://169.254.169.254/latest/meta-data"], duration=3
        )
        fox = api.generate(TEXT_TO_VIDEO, prompt="a red fox runs through snow", duration=3)
        assert isinstance(task, Task) and task.status == "pending" and task.creditsUsed == 84
        assert task.creditsRemaining == 1000 - 84 and fox.creditsRemaining == 1000 - 84 - 126 - 126

        seen: list[Task] = []
        done = api.wait(task, timeout=120, on_progress=seen.append, **FAST)
        assert done.is_completed and done.progress == 100 and seen[-1] == done
        assert [t.progress or 0 for t in seen] == sorted(t.progress or 0 for t in seen)
        assert {t.status for t in seen} <= {"pending", "processing", "completed"}
        assert done.video_url is not None and done.video_url.startswith(live.url + "/api/v1/files/")
        assert done.output is not None and done.output.hasAudio is False

        out = api.download(done, tmp_path / "new" / "card.mp4")
        assert out == tmp_path / "new" / "card.mp4" and sorted(p.name for p in out.parent.iterdir()) == ["card.mp4"]
        info = media.probe(out)
        assert (info.width, info.height) == (72, 128) and not info.has_audio
        assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6
        proxied = api.download(done.id, tmp_path / "proxied.mp4", proxy=True)
        assert proxied.read_bytes() == out.read_bytes()

        failed = raises(ErrorCode.TASK_FAILED, lambda: api.wait(bad.id, timeout=120, **FAST))
        assert "IMAGE_FETCH_FAILED" in failed.message and bad.id in failed.message
        assert failed.details and failed.details[0]["code"] == "IMAGE_FETCH_FAILED"
        assert api.get(bad.id).creditsUsed == 0
        raises(ErrorCode.NO_RESULT, lambda: api.download(bad, tmp_path / "never.mp4"))
        assert not (tmp_path / "never.mp4").exists()

        asyncio.run(async_flow(live.url, owner.key, fox.id, bad.id, tmp_path))
        balance = api.credits()
        assert (balance.credits, balance.reserved) == (1000 - 84 - 126, 0)
        api.close()
    assert ctx.db.run(ledger.check) == []


# ---------------------------------------------------------------------------------------------
# Every error path, on the API alone (no worker: tasks stay pending)
# ---------------------------------------------------------------------------------------------
def test_error_paths(live_api: LiveServer, ctx: service.Context, connect: Callable[..., Any], tmp_path: Path) -> None:
    rich = make_account(ctx, credits=1000, name="rich")
    broke = make_account(ctx, credits=50, name="broke")
    url = live_api.url

    for key, code in [
        ("sk-" + "x" * 43, ErrorCode.INVALID_API_KEY),
        ("not-a-key", ErrorCode.INVALID_KEY_FORMAT),
        (None, ErrorCode.MISSING_AUTH_HEADER),
    ]:
        err = raises(code, lambda key=key: connect(key, base_url=url).credits())
        assert err.status == 401 and err.message
    assert len(connect(None, base_url=url).models()) == 3  # the catalogue needs no key

    poor = connect(broke.key, base_url=url)
    err = raises(ErrorCode.INSUFFICIENT_CREDITS, lambda: poor.generate(TEXT_TO_VIDEO, prompt="a fox", duration=3))
    assert err.status == 402 and "Required: 126, Available: 50" in err.message

    api = connect(rich.key, base_url=url)
    err = raises(
        ErrorCode.INVALID_INPUT, lambda: api.generate(TEXT_TO_VIDEO, prompt="a fox", duration=20, colour="red")
    )
    assert err.status == 400 and err.details is not None
    assert {d["field"] for d in err.details} == {"input.duration", "input.colour"}
    raises(ErrorCode.MISSING_PROMPT, lambda: api.generate(TEXT_TO_VIDEO, prompt="  "))
    raises(ErrorCode.INVALID_MODEL, lambda: api.generate("kling-9", prompt="a fox"))

    err = raises(ErrorCode.TASK_NOT_FOUND, lambda: api.get(str(uuid.uuid4())))
    assert err.status == 404

    task = api.generate(TEXT_TO_VIDEO, prompt="a fox", duration=3, mode="professional", audio=None)
    assert task.creditsUsed == 56 * 3  # audio=None is left out: the default (with audio) applies
    err = raises(ErrorCode.NO_RESULT, lambda: api.download(task, tmp_path / "x.mp4"))
    assert err.status == 409
    raises(ErrorCode.NO_RESULT, lambda: api.download(task, tmp_path / "x.mp4", proxy=True))
    assert list(tmp_path.glob("*.mp4")) == [] and list(tmp_path.glob(".*part")) == []

    seen: list[Task] = []
    t0 = time.monotonic()
    # polling (stream=False): on_progress after every poll
    err = raises(
        ErrorCode.WAIT_TIMEOUT, lambda: api.wait(task, timeout=1.5, on_progress=seen.append, stream=False, **FAST)
    )
    assert time.monotonic() - t0 < 8 and task.id in err.message
    assert len(seen) >= 3 and {t.status for t in seen} == {"pending"} and seen[0].queuePosition == 0
    # following the event stream: the deadline holds while the stream is quiet
    seen.clear()
    t0 = time.monotonic()
    err = raises(ErrorCode.WAIT_TIMEOUT, lambda: api.wait(task, timeout=0.6, on_progress=seen.append, **FAST))
    assert time.monotonic() - t0 < 5 and task.id in err.message and seen[0].status == "pending"

    closed = f"http://127.0.0.1:{free_port()}"
    err = raises(ErrorCode.CONNECTION_ERROR, lambda: connect(rich.key, base_url=closed).models())
    assert closed in err.message and "\n" not in err.message


class FlakyNetwork(httpx.HTTPTransport):
    """A real transport to the real server that drops the first ``drops`` task polls (a network fault)."""

    def __init__(self, drops: int) -> None:
        super().__init__()
        self.drops, self.calls = drops, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "/tasks/" in request.url.path:
            self.calls += 1
            if self.calls <= self.drops:
                raise httpx.ConnectError("connection reset by peer", request=request)
        return super().handle_request(request)


def test_wait_rides_out_network_faults_until_its_deadline(live_api: LiveServer, ctx: service.Context) -> None:
    owner = make_account(ctx, credits=1000)
    flaky = FlakyNetwork(drops=2)
    with Client(owner.key, base_url=live_api.url, transport=flaky) as api:
        task = api.generate(TEXT_TO_VIDEO, prompt="a fox", duration=3)
        seen: list[Task] = []
        raises(ErrorCode.WAIT_TIMEOUT, lambda: api.wait(task, timeout=1.5, on_progress=seen.append, **FAST))
        assert flaky.calls > 2 and seen and seen[-1].status == "pending"
    down = FlakyNetwork(drops=10**6)
    with Client(owner.key, base_url=live_api.url, transport=down) as api:
        err = raises(ErrorCode.CONNECTION_ERROR, lambda: api.wait(task.id, timeout=0.5, **FAST))
        assert down.calls >= 2 and "connection reset" in err.message


# ---------------------------------------------------------------------------------------------
# STAND-IN FOR THE HOSTED SERVICE (not our server): httpx.MockTransport answering with the
# response variants VicSee's hosted API is documented to send, which reelgen itself never sends.
# ---------------------------------------------------------------------------------------------
CDN = "https://cdn.vicsee.example/videos/abc123.mp4"


@pytest.mark.parametrize(
    ("data", "status", "url"),
    [
        ({"id": "t1", "status": "success", "result": {"url": CDN, "type": "video"}}, "completed", CDN),
        ({"id": "t1", "status": "completed", "output": {"video_url": CDN}}, "completed", CDN),
        ({"taskId": "t1", "status": "completed", "output": {"videos": [{"url": CDN}]}}, "completed", CDN),
        ({"task_id": "t1", "status": "SUCCESS", "result": {"videos": [CDN]}}, "completed", CDN),
        ({"id": "t1", "status": "completed", "output": CDN}, "completed", CDN),
        ({"id": "t1", "status": "queued", "result": None}, "pending", None),
        ({"id": "t1", "status": "processing", "result": None, "progress": 41.6}, "processing", None),
    ],
)
def test_hosted_task_shapes_normalise(data: dict[str, Any], status: str, url: str | None) -> None:
    task = Task.from_api(data)
    assert (task.id, task.status, task.video_url) == ("t1", status, url)
    if url:
        assert task.result is not None and task.output is not None and task.output.url == url
    assert task.progress == (42 if "progress" in data else None)


def test_hosted_failure_shapes_normalise() -> None:
    bare = Task.from_api({"id": "t1", "status": "failed", "error": "Generation failed"})
    assert bare.error is not None and (bare.error.code, bare.error.message) == (
        "GENERATION_FAILED",
        "Generation failed",
    )
    missing = Task.from_api({"id": "t1", "status": "failed"})
    assert missing.error is not None and missing.error.code == "GENERATION_FAILED"
    full = {"code": "IMAGE_TOO_LARGE", "key": "image_too_large", "message": "too big"}
    assert Task.from_api({"id": "t1", "status": "failed", "error": full}).error.model_dump() == full  # type: ignore[union-attr]
    # a stale error object on a task that is not failed is ignored
    assert Task.from_api({"id": "t1", "status": "processing", "error": {"code": 0, "message": ""}}).error is None
    raises(ErrorCode.INTERNAL_ERROR, lambda: Task.from_api({"status": "pending"}))
    raises(ErrorCode.INTERNAL_ERROR, lambda: Task.from_api(["not", "a", "task"]))


class HostedStandIn:
    """Answers like the hosted API (labelled stand-in): ``success`` status, a CDN link, bare errors."""

    def __init__(self) -> None:
        self.polls = 0
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if request.url.host == "cdn.vicsee.example":
            return httpx.Response(200, content=b"\x00\x00\x00\x18ftypmp42video", headers={"content-type": "video/mp4"})
        if request.headers.get("authorization") != "Bearer sk-hosted":
            return httpx.Response(401, json={"success": False, "error": "Invalid API key"})
        if path == "/api/v1/generate":
            return httpx.Response(200, json={"success": True, "data": {"id": "task_abc123", "status": "pending"}})
        if path == "/api/v1/tasks/task_abc123":
            self.polls += 1
            status, result = ("success", {"url": CDN, "type": "video"}) if self.polls > 2 else ("processing", None)
            return httpx.Response(
                200, json={"success": True, "data": {"id": "task_abc123", "status": status, "result": result}}
            )
        if path == "/api/v1/tasks/task_bad":
            return httpx.Response(200, json={"success": True, "data": {"id": "task_bad", "status": "failed"}})
        if path == "/api/v1/tasks/task_abc123/download":
            return httpx.Response(200, json={"success": True, "data": {"url": CDN, "type": "video", "expiresAt": None}})
        if path == "/api/v1/models":
            model = {"id": TEXT_TO_VIDEO, "pricing": {"standard": {"audio": 42, "noAudio": 28}}, "maxDuration": 15}
            return httpx.Response(200, json={"success": True, "data": [model]})
        return httpx.Response(502, text="<html>bad gateway</html>")


def test_hosted_service_variants_end_to_end(tmp_path: Path) -> None:
    hosted = HostedStandIn()
    sleeps: list[float] = []
    with Client(
        "sk-hosted",
        base_url="https://vicsee.example",
        transport=httpx.MockTransport(hosted),
        sleep=sleeps.append,
    ) as api:
        task = api.generate(TEXT_TO_VIDEO, prompt="a fox", duration=5)
        done = api.wait(task)
        assert done.status == "completed" and done.video_url == CDN
        assert sleeps == [1.0, 1.5]  # the documented backoff: 1 s, then x1.5
        out = api.download(done, tmp_path / "fox.mp4")
        assert out.read_bytes().startswith(b"\x00\x00\x00\x18ftyp")
        cdn_request = hosted.seen[-1]
        assert cdn_request.url.host == "cdn.vicsee.example" and "authorization" not in cdn_request.headers
        err = raises(ErrorCode.TASK_FAILED, lambda: api.wait("task_bad"))
        assert "GENERATION_FAILED" in err.message
        (model,) = api.models()
        assert (model.name, model.minDuration, model.modes) == (TEXT_TO_VIDEO, 3, ["standard"])
        err = raises(ErrorCode.INTERNAL_ERROR, lambda: api.credits())
        assert err.status == 502 and "502" in err.message
    with Client("sk-other", base_url="https://vicsee.example", transport=httpx.MockTransport(hosted)) as api:
        err = raises(ErrorCode.INVALID_API_KEY, lambda: api.credits())
        assert (err.status, err.message) == (401, "Invalid API key")


def test_backoff_schedule_caps_at_ten_seconds_and_respects_the_deadline() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(round(s, 4))
        now[0] += s

    def pending(request: httpx.Request) -> httpx.Response:  # hosted stand-in: a task that never ends
        return httpx.Response(200, json={"success": True, "data": {"id": "t", "status": "queued"}})

    with Client(
        "sk-x",
        base_url="https://vicsee.example",
        transport=httpx.MockTransport(pending),
        sleep=sleep,
        clock=lambda: now[0],
    ) as api:
        raises(ErrorCode.WAIT_TIMEOUT, lambda: api.wait("t", timeout=60))
    assert sleeps[:8] == [1.0, 1.5, 2.25, 3.375, 5.0625, 7.5938, 10.0, 10.0]
    assert now[0] == pytest.approx(60.0) and sleeps[-1] < 10.0  # the last sleep ends at the deadline
