"""Routes of the API.md extensions: list, cancel, live events and previews, estimate, webhook secret, upload
(bytes, or VicSee's presign flow with its signed PUT and the owner's GET of ``publicUrl``),
VicSee's tools (not offered here), metrics. Parse, call one service function, render; no SQL,
pricing or HTTPException here."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from reelgen import service
from reelgen.api.auth import CurrentAccount, authorization_header, bearer_token
from reelgen.api.body import loads as load_json
from reelgen.api.routes import GENERATE_BODY, base_url, ctx_of, ok, success
from reelgen.api.sse import frames
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import (
    EXTERNAL_TASK_ID_PATTERN,
    PRESIGN_CONTENT_TYPES,
    UPLOAD_CONTENT_TYPES,
    PresignView,
    UploadView,
)

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
    external_task_id: str | None = Query(
        None, pattern=EXTERNAL_TASK_ID_PATTERN, description="only the task given this external_task_id (Kling's)"
    ),
) -> dict[str, Any]:
    """The caller's tasks, newest first, in pages: ``{tasks, nextCursor}``."""
    ctx = ctx_of(request)
    found = service.list_tasks(
        ctx, account, base_url(request), status=status, limit=limit, cursor=cursor, external_task_id=external_task_id
    )
    return ok(found)


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


@router.get(
    "/api/v1/tasks/{task_id}/preview",
    tags=["tasks"],
    response_class=Response,
    responses={
        200: {
            "content": {"image/webp": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The task's latest live preview: a small animated WebP",
        }
    },
)
def preview(task_id: str, request: Request, account: CurrentAccount) -> Response:
    """The latest live preview of the caller's task (while it runs, and after it completed for as long
    as its result is kept); 404 ``NO_PREVIEW`` before the first one or once the task ended without a result."""
    found = service.preview_file(ctx_of(request), account, task_id)
    headers = {"Cache-Control": "private, no-store", "Content-Disposition": f'inline; filename="{found.filename}"'}
    return Response(found.data, media_type=found.media_type, headers=headers)


@router.post("/api/v1/estimate", tags=["generation"], openapi_extra={"requestBody": GENERATE_BODY})
async def estimate(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """The price and a likely duration of a ``/generate`` body; charges nothing."""
    body = await json_body(request)
    return ok(await run_in_threadpool(service.estimate, ctx_of(request), account, body, base_url(request)))


@router.get("/api/v1/webhooks/secret", tags=["account"])
def webhook_secret(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """The ``whsec_...`` secret this account's webhooks are signed with (Standard Webhooks)."""
    return ok(service.webhook_secret(ctx_of(request), account))


#: an upload is never empty (the service answers 400 INVALID_INPUT to an empty body)
_BINARY = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
PRESIGN_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["contentType", "sizeBytes"],
    "properties": {
        "contentType": {"type": "string", "enum": list(PRESIGN_CONTENT_TYPES)},
        "sizeBytes": {"type": "integer", "minimum": 1, "description": "the exact size of the image to PUT"},
        "filename": {"type": ["string", "null"], "maxLength": 255, "description": "accepted and ignored"},
    },
}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": PRESIGN_SCHEMA},
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


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json"


@router.post(
    "/api/v1/upload",
    tags=["generation"],
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses=success(UploadView | PresignView),
)
async def upload(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Store an input image (JPEG, PNG or WEBP) sent as the body or a multipart ``file``; its ``url``
    or ``publicUrl`` is usable in ``image_urls``. With a JSON body ``{contentType, sizeBytes}``:
    VicSee's presign flow, ``{uploadUrl, publicUrl, key, expiresAt}`` (``PUT`` the bytes to ``uploadUrl``)."""
    ctx, base = ctx_of(request), base_url(request)
    if _is_json(request):
        body = await json_body(request)
        return ok(await run_in_threadpool(service.presign, ctx, account, body, base))
    data = await image_body(request)
    return ok(await run_in_threadpool(service.upload, ctx, account, data, base))


_IMAGE_RESPONSE = {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_CONTENT_TYPES}}


@router.put(
    "/api/v1/uploads/{upload_id}",
    tags=["generation"],
    openapi_extra={"requestBody": {"required": True, "content": {t: _BINARY for t in UPLOAD_CONTENT_TYPES}}},
    responses=success(UploadView),
)
async def put_upload(
    upload_id: Annotated[str, Path(pattern="^[0-9a-f]{32}$")],
    request: Request,
    expires: Annotated[str, Query(pattern="^[0-9]{1,12}$")],
    token: Annotated[str, Query(pattern="^[A-Za-z0-9_-]{1,64}$")],
) -> dict[str, Any]:
    """The bytes of a presigned upload (its ``uploadUrl``: signed, single use, no API key), exactly
    the declared type and size."""
    data = await request.body()
    ctype = request.headers.get("content-type")
    put = partial(service.put_presigned, ctx_of(request), upload_id, expires, token, ctype, data, base_url(request))
    return ok(await run_in_threadpool(put))


@router.get(
    "/api/v1/uploads/{upload_id}",
    tags=["generation"],
    response_class=Response,
    responses={200: {**_IMAGE_RESPONSE, "description": "The uploaded image"}},
)
def get_upload(
    upload_id: Annotated[str, Path(pattern="^[0-9a-f]{32}$")], request: Request, account: CurrentAccount
) -> Response:
    """An upload's image (its ``publicUrl``), for its owner only."""
    data, media_type = service.read_upload(ctx_of(request), account, upload_id)
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, no-store"})


@router.post("/api/v1/tools/{tool}", tags=["tools"], responses={501: {"description": "NOT_SUPPORTED"}})
def tools(tool: Literal["upscale-image", "upscale-video"], request: Request, account: CurrentAccount) -> dict[str, Any]:
    """VicSee's tools: not offered by this server (501 ``NOT_SUPPORTED``, naming what it serves)."""
    return ok(service.tool(ctx_of(request), tool))


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
