"""The MCP server end to end with the official SDK's own client, over both transports, against the
real server on a socket with its tiny-engine worker: ``/mcp`` (streamable HTTP on ``reelgen serve``)
and ``reelgen mcp`` (stdio, a subprocess talking to that server through reelgen's SDK)."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from reelgen import media, service
from reelgen.store import ledger, tasks, uploads
from tests.api_fixtures import LiveServer
from tests.factories import Account, make_account

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {"list_models", "estimate", "generate", "get_task", "wait", "cancel_task", "list_tasks", "credits"}


Opener = Callable[[], AbstractAsyncContextManager[Client]]


def http_client(url: str, key: str | None) -> Opener:
    """The SDK's client over streamable HTTP with a bearer key (its HTTP client closed after)."""

    @asynccontextmanager
    async def open_() -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
            transport = streamable_http_client(f"{url}/mcp", http_client=http)
            async with Client(transport, read_timeout_seconds=300) as client:
                yield client

    return open_


def stdio_client(url: str, key: str) -> Opener:
    """The SDK's client running ``reelgen mcp`` as a subprocess (stdio), pointed at ``url``."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "REELGEN_BASE_URL": url,
        "REELGEN_API_KEY": key,
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "reelgen", "mcp"], env=env, cwd=str(ROOT))

    @asynccontextmanager
    async def open_() -> AsyncIterator[Client]:
        async with Client(params, read_timeout_seconds=300) as client:
            yield client

    return open_


def run(opener: Opener, body: Callable[[Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with opener() as c:
            return await body(c)

    return anyio.run(main)


def png_file(tmp_path: Path) -> Path:
    path = tmp_path / "start frame.png"
    buf = io.BytesIO()
    Image.new("RGB", (160, 96), (200, 120, 30)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


async def generate_and_wait(c: Client, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    listed = {tool.name for tool in (await c.list_tools()).tools}
    assert listed == TOOLS
    made = await c.call_tool("generate", args)
    assert not made.is_error, made.content
    task = made.structured_content
    assert task["status"] == "pending" and task["cost_credits"] > 0

    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert total == 100
        seen.append(progress)

    done = await c.call_tool("wait", {"task_id": task["id"], "timeout_seconds": 300}, progress_callback=on_progress)
    assert not done.is_error, done.content
    return task, done.structured_content, seen


def check_result(result: dict[str, Any], tmp_path: Path, seen: list[float]) -> None:
    assert result["status"] == "completed" and result["done"] is True, result
    assert seen and seen[-1] == 100 and seen == sorted(seen)
    assert result["audio"] is True and abs(result["duration_seconds"] - 3.0) < 0.05
    # small results: a URL, never bytes or a data URI
    assert result["url"].startswith("http") and "data:" not in str(result)
    raw = httpx.get(result["url"], timeout=30).content
    assert len(raw) == result["size_bytes"]
    out = tmp_path / "mcp.mp4"
    out.write_bytes(raw)
    info = media.probe(out)
    assert info.has_audio and abs(info.duration - 3.0) <= 1 / 24 + 1e-6


def test_streamable_http_generate_progress_completed(live: LiveServer, ctx: service.Context, tmp_path: Path) -> None:
    owner = make_account(ctx, credits=1000, name="agent")

    async def body(c: Client) -> tuple[Any, ...]:
        price = await c.call_tool("estimate", {"prompt": "a lighthouse at dawn", "duration": 3})
        task, done, seen = await generate_and_wait(c, {"prompt": "a lighthouse at dawn", "duration": 3})
        listed = (await c.call_tool("list_tasks", {"limit": 5})).structured_content
        credits = (await c.call_tool("credits", {})).structured_content
        models = await c.call_tool("list_models", {})
        return price.structured_content, task, done, seen, listed, credits, models

    price, task, done, seen, listed, credits, models = run(http_client(live.url, owner.key), body)
    assert price["credits"] == 126 and task["cost_credits"] == 126 and task["credits_remaining"] == 1000 - 126
    check_result(done, tmp_path, seen)
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    assert credits == {"credits": 1000 - 126, "reserved": 0}
    assert "kling-3-0-text-to-video" in str(models.structured_content)
    assert ctx.db.run(lambda conn: ledger.balance(conn, owner.id)).captured == 126


def test_stdio_generate_uploads_local_image_and_waits(live: LiveServer, ctx: service.Context, tmp_path: Path) -> None:
    owner = make_account(ctx, credits=1000, name="agent")
    image = png_file(tmp_path)

    async def body(c: Client) -> tuple[Any, ...]:
        task, done, seen = await generate_and_wait(
            c, {"prompt": "the sun sets", "duration": 3, "image_urls": [str(image)]}
        )
        got = (await c.call_tool("get_task", {"task_id": task["id"]})).structured_content
        return task, done, seen, got

    task, done, seen, got = run(stdio_client(live.url, owner.key), body)
    assert task["model"] == "kling-3-0-image-to-video"
    check_result(done, tmp_path, seen)
    assert got["url"] and got["size_bytes"] == done["size_bytes"]
    # the local file was uploaded for the caller: the task names the upload, not a path or a data URI
    row = ctx.db.run(lambda conn: tasks.get(conn, task["id"]))
    assert row is not None and uploads.parse_url(row.input["image_urls"][0]) is not None


def test_errors_are_tool_errors_with_codes_and_charge_nothing(
    live_api: LiveServer, ctx: service.Context, tmp_path: Path
) -> None:
    owner = make_account(ctx, credits=100, name="agent")

    async def body(c: Client) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, args in {
            "poor": ("generate", {"prompt": "x", "duration": 5}),
            "blank": ("generate", {"prompt": "   "}),
            "long": ("generate", {"prompt": "x", "duration": 99}),
            "path": ("generate", {"prompt": "x", "image_urls": [str(png_file(tmp_path))]}),
            "unknown": ("get_task", {"task_id": "0" * 32}),
            "wait_unknown": ("wait", {"task_id": "0" * 32, "timeout_seconds": 1}),
        }.items():
            result = await c.call_tool(*args)
            assert result.is_error, name
            out[name] = result.content[0].text  # type: ignore[union-attr]
        made = await c.call_tool("generate", {"prompt": "short", "duration": 3, "audio": False})
        assert not made.is_error and made.structured_content is not None, made
        queued = made.structured_content
        out["queued"] = queued
        waited = await c.call_tool("wait", {"task_id": queued["id"], "timeout_seconds": 0.5})
        out["waited"] = waited.structured_content
        out["cancelled"] = (await c.call_tool("cancel_task", {"task_id": queued["id"]})).structured_content
        again = await c.call_tool("cancel_task", {"task_id": queued["id"]})
        out["again"] = again.structured_content  # cancelling twice answers the cancelled task again
        return out

    out = run(http_client(live_api.url, owner.key), body)
    assert "INSUFFICIENT_CREDITS: Insufficient credits. Required: 210, Available: 100" in out["poor"]
    assert "Nothing was charged" in out["poor"]
    assert "MISSING_PROMPT:" in out["blank"]
    assert "INVALID_INPUT:" in out["long"] and "duration" in out["long"]
    assert "INVALID_INPUT:" in out["path"] and "reelgen mcp" in out["path"]
    assert "TASK_NOT_FOUND:" in out["unknown"] and "TASK_NOT_FOUND:" in out["wait_unknown"]
    # bounded wait: no worker runs here, so it returns with the task still pending
    assert (
        out["waited"]["done"] is False
        and out["waited"]["status"] == "pending"
        and "wait again" in out["waited"]["hint"]
    )
    assert out["cancelled"]["status"] == "cancelled" and out["cancelled"]["cost_credits"] == 0
    assert out["again"]["status"] == "cancelled"
    assert ctx.db.run(lambda conn: ledger.balance(conn, owner.id)) == ledger.Balance(
        available=100, reserved=0, captured=0, granted=100
    )


def test_mcp_route_needs_a_key(live_api: LiveServer) -> None:
    r = httpx.post(f"{live_api.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "MISSING_AUTH_HEADER"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(
        f"{live_api.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer sk-" + "x" * 43},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_API_KEY"

    async def body(c: Client) -> None:
        await c.list_tools()

    with pytest.raises(Exception):  # noqa: B017 - the SDK's client fails to connect without a key
        run(http_client(live_api.url, None), body)


def test_stdio_reports_a_server_it_cannot_reach(tmp_path: Path, ctx: service.Context) -> None:
    owner: Account = make_account(ctx, credits=10, name="agent")

    async def body(c: Client) -> str:
        result = await c.call_tool("credits", {})
        assert result.is_error
        return str(result.content[0].text)  # type: ignore[union-attr]

    text = run(stdio_client("http://127.0.0.1:9", owner.key), body)
    assert "CONNECTION_ERROR:" in text and "REELGEN_BASE_URL" in text
