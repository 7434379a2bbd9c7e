"""Routes of the API.md extensions: list, cancel, live events, estimate, webhook secret, upload,
metrics. Parse, call one service
function, render; no SQL, pricing or HTTPException here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from reelgen import service
from reelgen.api.auth import CurrentAccount, authorization_header, bearer_token
from reelgen.api.body import loads as load_json
from reelgen.api.routes import GENERATE_BODY, base_url, ctx_of, ok
from reelgen.api.sse import frames
from reelgen.errors import ErrorCode, ReelgenError

router = APIRouter()
#: ``status`` filter values, so the OpenAPI document states them (the service checks them too)
TaskStatusName = Literal["pending", "processing", "completed", "failed", "cancelled"]


async def json_body(request: Request) -> Any:
    return load_json(await request.body())


@router.get("/api/v1/tasks", tags=["tasks"])
def list_tasks(
    request: Request,
    account: CurrentAccount,
    status: Annotated[
        TaskStatusName | None, Query(description="pending, processing, completed, failed or cancelled")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=service.MAX_PAGE_SIZE, description=f"1-{service.MAX_PAGE_SIZE} tasks per page")
    ] = service.DEFAULT_PAGE_SIZE,
    cursor: str | None = Query(None, pattern=service.CURSOR_PATTERN, description="nextCursor of the previous page"),
) -> dict[str, Any]:
    """The caller's tasks, newest first, in pages: ``{tasks, nextCursor}``."""
    ctx = ctx_of(request)
    return ok(service.list_tasks(ctx, account, base_url(request), status=status, limit=limit, cursor=cursor))


@router.post("/api/v1/tasks/{task_id}/cancel", tags=["tasks"])
def cancel(task_id: str, request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Cancel a pending task at once, or a processing one at its next step; its credits are released."""
    return ok(service.cancel(ctx_of(request), account, task_id, base_url(request)))


@router.get(
    "/api/v1/tasks/{task_id}/events",
    tags=["tasks"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events until terminal"}},
)
async def events(task_id: str, request: Request, account: CurrentAccount) -> StreamingResponse:
    """Server-Sent Events: ``status`` and ``progress`` events carrying the task, until it is terminal."""
    events = await service.task_events(ctx_of(request), account, task_id, base_url(request))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(events), media_type="text/event-stream", headers=headers)


@router.post("/api/v1/estimate", tags=["generation"], openapi_extra={"requestBody": GENERATE_BODY})
async def estimate(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """The price and a likely duration of a ``/generate`` body; charges nothing."""
    body = await json_body(request)
    return ok(await run_in_threadpool(service.estimate, ctx_of(request), account, body))


@router.get("/api/v1/webhooks/secret", tags=["account"])
def webhook_secret(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """The ``whsec_...`` secret this account's webhooks are signed with (Standard Webhooks)."""
    return ok(service.webhook_secret(ctx_of(request), account))


#: an upload is never empty (the service answers 400 INVALID_INPUT to an empty body)
_BINARY = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
        "image/webp": _BINARY,
        "multipart/form-data": {
            # one field only (image_body parses with max_fields=1): a form with more is refused
            "schema": {
                "type": "object",
                "properties": {"file": _BINARY["schema"]},
                "required": ["file"],
                "additionalProperties": False,
            }
        },
    },
}


async def image_body(request: Request) -> bytes:
    """The image bytes: the raw body, or the ``file`` field of a multipart form."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return await request.body()
    async with request.form(max_files=1, max_fields=1) as form:  # closes the spooled files
        extra = [name for name in form if name != "file"]
        if extra:
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                "Invalid image: a multipart upload carries one field, 'file'.",
                details=[{"field": "body", "message": f"unexpected field {extra[0][:100]!r}"}],
            )
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                "Invalid image: a multipart upload needs the image in a field named 'file'.",
                details=[{"field": "file", "message": "required"}],
            )
        return await file.read()


@router.post("/api/v1/upload", tags=["generation"], openapi_extra={"requestBody": UPLOAD_BODY})
async def upload(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Store an input image (JPEG, PNG or WEBP); its ``url`` is usable in ``image_urls``."""
    data = await image_body(request)
    return ok(await run_in_threadpool(service.upload, ctx_of(request), account, data))


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics: queue depth, tasks by status, generation times, credits, worker health."""
    from reelgen.metrics import CONTENT_TYPE

    pids = getattr(request.app.state.executor, "pids", None)
    token = bearer_token(authorization_header(request))
    body = service.metrics(ctx_of(request), token, len(pids()) if pids else None)
    return Response(body, media_type=CONTENT_TYPE)
