"""The MCP server's tools (official ``mcp`` SDK, ``MCPServer``): models with prices, estimate,
generate, get task, wait (progress notifications from the task's event stream, bounded), cancel,
list tasks, credits. Each tool is one backend call (``doors.backends``) and a small result: the
result URL, duration, size, audio and cost — never a file's bytes or a data URI. Errors come back
as MCP tool errors: ``"CODE: message"`` with our stable code and what to do next.

``build_server(backend_for)`` serves both transports: ``reelgen mcp`` on stdio (``run_stdio``,
through the SDK) and ``/mcp`` on ``reelgen serve`` (``doors.mcp_http``, in-process, per account).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from reelgen import __version__
from reelgen.client import Task
from reelgen.doors.backends import Backend, read_image
from reelgen.errors import ErrorCode, ReelgenError

__all__ = ["HINTS", "MAX_WAIT_SECONDS", "Shot", "build_server", "run_stdio", "summary"]

TEXT_TO_VIDEO = "kling-3-0-text-to-video"
IMAGE_TO_VIDEO = "kling-3-0-image-to-video"
#: ``wait`` returns after at most this long, the task still running (the agent calls it again)
MAX_WAIT_SECONDS = 600.0
DEFAULT_WAIT_SECONDS = 120.0
#: the tool arguments that go into the ``/generate`` body
FIELDS = (
    "model",
    "prompt",
    "duration",
    "mode",
    "audio",
    "aspect_ratio",
    "image_urls",
    "multi_shots",
    "multi_prompt",
    "multi_shot_continuity",
    "negative_prompt",
    "cfg_scale",
    "seed",
    "callback_url",
)
#: stands in for a local image in ``estimate`` (prices never depend on the image; nothing is fetched)
ESTIMATE_HOST = "local-image.invalid"

#: what an agent can do about each error
HINTS: dict[str, str] = {
    ErrorCode.INSUFFICIENT_CREDITS: "Nothing was charged. Ask the account owner for credits, or use a shorter "
    "duration, standard mode or no audio (the estimate tool prices a request).",
    ErrorCode.INVALID_INPUT: "Nothing was charged. Fix the named field and call again (list_models shows the inputs).",
    ErrorCode.MISSING_PROMPT: "Nothing was charged. Give a non-blank prompt.",
    ErrorCode.INVALID_MODEL: "Nothing was charged. Use a model id from list_models.",
    ErrorCode.MISSING_MODEL: "Nothing was charged. Use a model id from list_models.",
    ErrorCode.TASK_NOT_FOUND: "Check the task id; list_tasks shows this account's tasks.",
    ErrorCode.NOT_CANCELLABLE: "The task already ended; there is nothing to cancel.",
    ErrorCode.NO_RESULT: "The task has no result yet; call wait.",
    ErrorCode.RATE_LIMITED: "Too many requests or tasks at once: wait a little and retry.",
    ErrorCode.SERVICE_UNAVAILABLE: "The server is busy: retry in a moment.",
    ErrorCode.CONNECTION_ERROR: "Check REELGEN_BASE_URL and that the reelgen server is running.",
    ErrorCode.MISSING_AUTH_HEADER: "Set REELGEN_API_KEY (or the bearer key of this connection).",
    ErrorCode.INVALID_API_KEY: "The API key is unknown, revoked or expired: ask for a new one.",
    ErrorCode.INVALID_KEY_FORMAT: "API keys start with sk-.",
    ErrorCode.PAYLOAD_TOO_LARGE: "Nothing was charged. Use a smaller image.",
}


class Shot(BaseModel):
    """One shot of a multi-shot video."""

    prompt: str = Field(description="what this shot shows")
    duration: int = Field(description="seconds; the shots add up to the video's duration")


@asynccontextmanager
async def _tool_errors() -> AsyncIterator[None]:
    try:
        yield
    except ReelgenError as exc:
        hint = HINTS.get(str(exc.code), "")
        detail = ""
        if exc.details:
            detail = " (" + "; ".join(f"{d.get('field')}: {d.get('message')}" for d in exc.details[:3]) + ")"
        raise ToolError(f"{exc.code}: {exc.message}{detail} {hint}".strip()) from None
    except OSError as exc:  # a local image path that cannot be read (stdio)
        raise ToolError(f"{ErrorCode.INVALID_INPUT}: cannot read the image file: {exc.strerror or exc}.") from None


def summary(task: Task, size: int | None = None) -> dict[str, Any]:
    """A task as a tool result: small, no bytes; the URL, duration, size, audio and cost once done."""
    out: dict[str, Any] = {
        "id": task.id,
        "model": task.model,
        "status": task.status,
        "progress": task.progress,
        "cost_credits": task.creditsUsed,
    }
    if task.creditsRemaining is not None:
        out["credits_remaining"] = task.creditsRemaining
    if task.status == "pending":
        out["queue_position"] = task.queuePosition
    if not task.is_terminal and task.etaSeconds is not None:
        out["eta_seconds"] = task.etaSeconds
    if task.is_completed:
        out["url"] = task.video_url
        out["duration_seconds"] = task.output.duration if task.output is not None else None
        out["audio"] = task.output.hasAudio if task.output is not None else None
        out["size_bytes"] = size
    if task.error is not None:
        out["error"] = {"code": task.error.code, "message": task.error.message}
    return out


def _image_url(value: str) -> bool:
    return value.startswith(("http://", "https://", "data:", "reelgen-upload://"))


async def _body(backend: Backend, args: dict[str, Any], *, upload: bool) -> dict[str, Any]:
    """The ``/generate`` body of a tool call; local image paths are uploaded first (stdio only)."""
    inp = {k: v for k, v in args.items() if v is not None and k not in ("model", "callback_url")}
    if inp.get("multi_prompt") is not None:
        inp["multi_prompt"] = [shot.model_dump() if isinstance(shot, Shot) else shot for shot in inp["multi_prompt"]]
    images = list(inp.get("image_urls") or [])
    for i, image in enumerate(images):
        if _image_url(image):
            continue
        if not backend.local_files:
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"Invalid input: image_urls.{i}: this connection takes image URLs (http(s), data:image/...), "
                "not file paths; paths work with `reelgen mcp` on the caller's machine",
                details=[{"field": f"image_urls.{i}", "message": "a URL, not a path"}],
            )
        if upload:
            images[i] = await backend.upload(read_image(image))
        else:  # the price does not depend on the image: estimate checks the file exists, uploads nothing
            read_image(image)
            images[i] = f"https://{ESTIMATE_HOST}/{i}.png"
    if images:
        inp["image_urls"] = images
    model = args.get("model") or (IMAGE_TO_VIDEO if images else TEXT_TO_VIDEO)
    body: dict[str, Any] = {"model": model, "input": inp}
    if args.get("callback_url"):
        body["callback_url"] = args["callback_url"]
    return body


def build_server(backend_for: Callable[[Context], Backend]) -> MCPServer:
    """The MCP server; ``backend_for(ctx)`` gives the backend of the caller of one tool call."""
    # MCPServer() calls logging.basicConfig (a Rich handler on the root logger): keep the host
    # process's logging as it was (``reelgen serve`` leaves root logging to uvicorn and the operator)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer = MCPServer(
        name="reelgen",
        version=__version__,
        instructions=(
            "Generate short videos with sound (Kling 3.0-compatible models on reelgen). Typical flow: "
            "list_models or estimate to see the price in credits, generate, then wait (repeat until done), "
            "and give the user the url. Credits are only taken for completed videos."
        ),
    )
    root.handlers[:] = handlers
    root.setLevel(level)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
    async def list_models(ctx: Context) -> list[dict[str, Any]]:
        """The models this server runs: inputs, durations and prices in credits per second."""
        async with _tool_errors():
            return await backend_for(ctx).models()

    @server.tool(annotations=read_only)
    async def estimate(
        ctx: Context,
        prompt: str,
        model: str | None = None,
        duration: int | None = None,
        mode: Literal["standard", "professional"] | None = None,
        audio: bool | None = None,
        aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None,
        image_urls: list[str] | None = None,
        multi_shots: bool | None = None,
        multi_prompt: list[Shot] | None = None,
        multi_shot_continuity: Literal["cut", "continue", "same_subject"] | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """What generate would charge for these inputs (credits) and roughly how long it takes; charges nothing."""
        args = {k: v for k, v in locals().items() if k in FIELDS}
        async with _tool_errors():
            backend = backend_for(ctx)
            return await backend.estimate(await _body(backend, args, upload=False))

    @server.tool()
    async def generate(
        ctx: Context,
        prompt: str,
        model: str | None = None,
        duration: int | None = None,
        mode: Literal["standard", "professional"] | None = None,
        audio: bool | None = None,
        aspect_ratio: Literal["16:9", "9:16", "1:1"] | None = None,
        image_urls: list[str] | None = None,
        multi_shots: bool | None = None,
        multi_prompt: list[Shot] | None = None,
        multi_shot_continuity: Literal["cut", "continue", "same_subject"] | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Queue a video and reserve its price. Defaults: 5 s, standard mode, with audio, 16:9.

        image_urls: 1 start frame, or start and end frame (image-to-video); http(s) URLs or data URIs,
        or local file paths with `reelgen mcp` (uploaded for you). multi_prompt: shots whose durations
        add up to duration (with multi_shots true); multi_shot_continuity: cut (default), continue (each
        shot flows on from the one before) or same_subject (later shots keep shot 1's subject). Returns
        the task id; then call wait.
        """
        args = {k: v for k, v in locals().items() if k in FIELDS}
        async with _tool_errors():
            backend = backend_for(ctx)
            return summary(await backend.generate(await _body(backend, args, upload=True)))

    @server.tool(annotations=read_only)
    async def get_task(ctx: Context, task_id: str) -> dict[str, Any]:
        """A task's status and progress; once completed its url, duration, size, audio and cost."""
        async with _tool_errors():
            backend = backend_for(ctx)
            task = await backend.get(task_id)
            return summary(task, await backend.size(task))

    @server.tool(annotations=read_only)
    async def wait(ctx: Context, task_id: str, timeout_seconds: float = DEFAULT_WAIT_SECONDS) -> dict[str, Any]:
        """Follow a task until it ends, sending progress notifications (0-100) meanwhile. Returns the
        task when it ended, or after timeout_seconds (at most 600) with done=false: call wait again."""
        limit = min(max(timeout_seconds, 0.0), MAX_WAIT_SECONDS)
        async with _tool_errors():
            backend = backend_for(ctx)
            last: Task | None = None
            with anyio.move_on_after(limit):
                async for task in backend.follow(task_id):
                    last = task
                    await ctx.report_progress(float(task.progress or 0), 100.0, f"{task.status}")
                    if task.is_terminal:
                        break
            if last is None:
                last = await backend.get(task_id)
            out = summary(last, await backend.size(last))
            out["done"] = last.is_terminal
            if not last.is_terminal:
                out["hint"] = "The task is still running; call wait again."
            return out

    @server.tool()
    async def cancel_task(ctx: Context, task_id: str) -> dict[str, Any]:
        """Cancel a pending or processing task; its reserved credits are released."""
        async with _tool_errors():
            return summary(await backend_for(ctx).cancel(task_id))

    @server.tool(annotations=read_only)
    async def list_tasks(
        ctx: Context,
        status: Literal["pending", "processing", "completed", "failed", "cancelled"] | None = None,
        limit: int = 10,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """This account's tasks, newest first; pass next_cursor back for the next page."""
        async with _tool_errors():
            found, next_cursor = await backend_for(ctx).list(status, limit, cursor)
            return {"tasks": [summary(t) for t in found], "next_cursor": next_cursor}

    @server.tool(annotations=read_only)
    async def credits(ctx: Context) -> dict[str, Any]:
        """Available credits, and credits reserved by pending or processing tasks."""
        async with _tool_errors():
            return await backend_for(ctx).credits()

    return server


def run_stdio(api_key: str | None = None, base_url: str | None = None) -> None:
    """``reelgen mcp``: the MCP server on stdin/stdout, talking to a reelgen server through the SDK."""
    from reelgen.client import AsyncClient
    from reelgen.doors.backends import ClientBackend

    async def main() -> None:
        async with AsyncClient(api_key, base_url=base_url) as client:
            backend = ClientBackend(client)
            await build_server(lambda ctx: backend).run_stdio_async()

    anyio.run(main)
