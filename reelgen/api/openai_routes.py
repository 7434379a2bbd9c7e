"""The ``/v1/videos`` routes (OpenAI Videos API shape): parse, call one ``service.videos`` function,
render. Errors on these routes only use OpenAI's envelope ``{"error": {message, type, param,
code}}`` with the status of the one table (``api/errors.STATUS``) and our stable code in lower case
as ``code`` (``invalid_api_key``, ``insufficient_credits``, ...)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from reelgen.api.auth import CurrentAccount
from reelgen.api.errors import _text, status_for
from reelgen.api.head import is_head
from reelgen.api.openapi import PROMPT
from reelgen.api.streaming import mp4_response
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import (
    IMAGE_TO_VIDEO,
    IMAGE_URL_PATTERN,
    MAX_DURATION,
    MAX_PROMPT_CHARS,
    MIN_DURATION,
    TEXT_TO_VIDEO,
)
from reelgen.service import Context
from reelgen.service import videos as service
from reelgen.video_view import DEFAULT_SIZE, MODELS, SIZES

__all__ = ["OPENAI_PATHS", "openai_error", "router"]

#: the OpenAI error ``type`` for each status
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    416: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(exc: ReelgenError) -> JSONResponse:
    """A ``ReelgenError`` in OpenAI's error envelope, with the status of the one table."""
    status = status_for(exc.code)
    code, message = str(exc.code), exc.message
    if status >= 500 and exc.code != ErrorCode.SERVICE_UNAVAILABLE:
        status, code, message = 500, ErrorCode.INTERNAL_ERROR.value, "Internal server error."
    param = None
    if exc.details:
        field = str(exc.details[0].get("field", ""))
        param = field or None
    headers = dict(exc.headers)
    if exc.code == ErrorCode.SERVICE_UNAVAILABLE:
        headers.setdefault("Retry-After", "1")
    body = {
        "error": {
            "message": _text(message),
            "type": _TYPES.get(status, "server_error"),
            "param": _text(param),
            "code": code.lower(),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """A route whose errors (ours, parameter validation, and auth) use OpenAI's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ReelgenError as exc:
                return openai_error(service.door_error(exc))
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
                field = ".".join(loc) or "request"
                message = f"Invalid '{field}': {first.get('msg', 'invalid')}"
                err = ReelgenError(ErrorCode.INVALID_INPUT, message, details=[{"field": field, "message": message}])
                return openai_error(err)

        return route


router = APIRouter(route_class=OpenAIRoute, tags=["videos (OpenAI)"])


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    """The OpenAI video object."""

    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    prompt: str | None
    size: str
    seconds: str
    remixed_from_video_id: str | None
    error: VideoError | None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error envelope (``/v1/videos`` only)."""

    error: OpenAIErrorBody


def _responses(model: Any, *errors: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {200: {"model": model}}
    for status in (400, 401, 413, 429, 503, *errors):
        out[status] = {"model": OpenAIError}
    return out


#: the operations whose documented responses are the ones declared here (``api/openapi.py`` keeps them)
OPENAI_PATHS = ("/v1/videos",)

_REF = {"type": "string", "format": "binary"}
_PROMPT = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": PROMPT}
#: what ``service.videos`` takes as ``seconds``: digits (leading zeros allowed), 3-15 on this schema
_SECONDS_TEXT = {"type": "string", "pattern": "^0{0,4}(?:[3-9]|1[0-5])$"}
_SECONDS = {"oneOf": [_SECONDS_TEXT, {"type": "integer", "minimum": MIN_DURATION, "maximum": MAX_DURATION}]}
_SIZE = {"type": "string", "enum": list(SIZES), "default": DEFAULT_SIZE}
_OPENAI_MODELS = [m for m in MODELS if m not in (TEXT_TO_VIDEO, IMAGE_TO_VIDEO)]
_IMAGE = {"type": "string", "pattern": IMAGE_URL_PATTERN}
_REFERENCE = {
    "oneOf": [
        _IMAGE,
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["image_url"],
            "properties": {"image_url": _IMAGE},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["file_id"],
            "properties": {"file_id": {"type": "string", "description": "the id POST /api/v1/upload answered"}},
        },
    ]
}


def _variants(seconds: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Text-to-video (no ``input_reference``) or image-to-video (with one): ``model`` tells ours apart."""

    def variant(models: list[str], with_reference: bool) -> dict[str, Any]:
        props: dict[str, Any] = {
            "prompt": _PROMPT,
            "model": {"type": "string", "enum": models, "default": "sora-2"},
            "seconds": seconds,
            "size": _SIZE,
        }
        if with_reference:
            props["input_reference"] = reference
        required = ["prompt", "input_reference"] if with_reference else ["prompt"]
        return {"type": "object", "additionalProperties": False, "required": required, "properties": props}

    return {
        "oneOf": [
            variant([*_OPENAI_MODELS, TEXT_TO_VIDEO], False),
            variant([*_OPENAI_MODELS, IMAGE_TO_VIDEO], True),
        ]
    }


CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": _variants(_SECONDS, _REFERENCE)},
        "multipart/form-data": {"schema": _variants(_SECONDS_TEXT, _REF)},
    },
}
REMIX_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["prompt"],
                "properties": {"prompt": _PROMPT},
            }
        }
    },
}


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ReelgenError(ErrorCode.INVALID_JSON, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ReelgenError(ErrorCode.INVALID_JSON, "The request body must be a JSON object.")
    return body


async def _form_fields(request: Request) -> tuple[dict[str, Any], bytes | None]:
    """A multipart create: its fields (``input_reference[image_url]`` / ``[file_id]`` as the SDK
    sends a reference object) and the bytes of an uploaded ``input_reference`` file."""
    fields: dict[str, Any] = {}
    image = None
    async with request.form(max_files=1, max_fields=20) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise ReelgenError(
                        ErrorCode.INVALID_INPUT,
                        "Invalid 'input_reference': the only file this route takes is input_reference.",
                        details=[{"field": name[:100], "message": "unexpected file"}],
                    )
                image = await value.read()
            elif name.startswith("input_reference[") and name.endswith("]"):
                fields.setdefault("input_reference", {})[name[len("input_reference[") : -1]] = value
            else:
                fields[name] = value
    return fields, image


@router.post(
    "/v1/videos",
    response_model=None,
    responses=_responses(Video, 402, 404, 422),
    openapi_extra={"requestBody": CREATE_BODY},
)
async def create_video(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Create a video: JSON or multipart (``input_reference`` as a file, an image URL or a file id).

    Charged exactly as ``POST /api/v1/generate`` (the same request underneath); see docs/api.md for
    how ``model`` and ``size`` map onto our models, modes and aspect ratios."""
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        fields, image = await _form_fields(request)
    else:
        fields, image = await _json_object(request), None
    idem = request.headers.get("idempotency-key")
    return await run_in_threadpool(service.create, _ctx(request), account, fields, image, idempotency_key=idem)


@router.get("/v1/videos", response_model=None, responses=_responses(VideoList, 404))
def list_videos(
    request: Request,
    account: CurrentAccount,
    after: str | None = Query(None, max_length=64, description="the last id of the previous page"),
    limit: int = Query(20, ge=1, le=100, description="1-100"),
    order: Literal["asc", "desc"] = Query("desc", description="by creation time"),
) -> dict[str, Any]:
    """The caller's videos (every task, whichever door created it), newest first by default."""
    return service.list_videos(_ctx(request), account, after=after, limit=limit, order=order)


@router.get("/v1/videos/{video_id}", response_model=None, responses=_responses(Video, 404))
def retrieve_video(video_id: str, request: Request, account: CurrentAccount) -> dict[str, Any]:
    """A video's status and progress."""
    return service.retrieve(_ctx(request), account, video_id)


@router.delete("/v1/videos/{video_id}", response_model=None, responses=_responses(VideoDeleted, 404, 409))
def delete_video(video_id: str, request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Delete a completed or failed video's stored result; its ledger entries stay."""
    return service.delete(_ctx(request), account, video_id)


_CONTENT_OK = {
    "description": "The MP4, a WebP thumbnail or a JPEG sprite sheet",
    "content": {"video/mp4": {"schema": _REF}, "image/webp": {"schema": _REF}, "image/jpeg": {"schema": _REF}},
}


@router.get(
    "/v1/videos/{video_id}/content",
    response_model=None,
    responses={**_responses(None, 404, 409, 416), 200: _CONTENT_OK},
)
def video_content(
    video_id: str,
    request: Request,
    account: CurrentAccount,
    variant: Literal["video", "thumbnail", "spritesheet"] = Query("video"),
) -> Response:
    """The MP4 (HTTP Range), or a still made from it: ``thumbnail`` (WebP), ``spritesheet`` (JPEG)."""
    ctx = _ctx(request)
    found = service.content(ctx, account, video_id, variant)
    if isinstance(found, service.Preview):
        headers = {"Content-Disposition": f'inline; filename="{found.filename}"'}
        return Response(found.data, media_type=found.media_type, headers=headers)
    return mp4_response(found, request.headers.get("range"), head=is_head(request))


@router.post(
    "/v1/videos/{video_id}/remix",
    response_model=None,
    responses=_responses(Video, 402, 404, 409, 422),
    openapi_extra={"requestBody": REMIX_BODY},
)
async def remix_video(video_id: str, request: Request, account: CurrentAccount) -> dict[str, Any]:
    """A new video from a completed one's settings and seed, with a new prompt (charged as a new task)."""
    body = await _json_object(request)
    unknown = sorted(set(body) - {"prompt"})
    if unknown:
        message = f"Invalid '{unknown[0][:100]}': unknown parameter (this route takes prompt)"
        raise ReelgenError(ErrorCode.INVALID_INPUT, message, details=[{"field": unknown[0][:100], "message": message}])
    idem = request.headers.get("idempotency-key")
    return await run_in_threadpool(
        service.remix, _ctx(request), account, video_id, body.get("prompt"), idempotency_key=idem
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _method_not_allowed(path: str) -> None:
    """Every other method on ``path``: 405 in this door's envelope, ``Allow`` naming the methods the
    path has (Starlette would answer with one route's methods only, in the other envelope)."""
    allowed = sorted({m for r in router.routes if isinstance(r, APIRoute) and r.path == path for m in r.methods or ()})

    def not_allowed() -> Response:
        raise ReelgenError(ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed.", headers={"Allow": ", ".join(allowed)})

    others = [m for m in _METHODS if m not in allowed]
    router.add_api_route(path, not_allowed, methods=others, include_in_schema=False)


for _path in sorted({r.path for r in router.routes if isinstance(r, APIRoute)}):
    _method_not_allowed(_path)


@router.api_route("/v1/videos/{rest:path}", methods=list(_METHODS), include_in_schema=False)
def unknown_video_route(rest: str) -> Response:
    """Anything else under ``/v1/videos`` answers in this door's shape too."""
    raise ReelgenError(ErrorCode.NOT_FOUND, "Unknown route under /v1/videos.")
