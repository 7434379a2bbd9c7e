"""The ``/v1/videos`` door (OpenAI Videos API shape) over the same tasks, credits and ledger.

Every rule lives where it lives for ``/api/v1``: a create becomes a Kling ``/generate`` body and
goes through ``tasks.submit`` (validation, price, hold, limits, idempotency), a read goes through
``tasks.owned_task``, a download through ``results``, an image through ``uploads.upload``. This
module only translates: OpenAI fields -> a generate body (``video_view.SIZES`` / ``MODELS``), and a
task row -> the video object (``video_view.video_object``). What only this door knows (the OpenAI
model id and size asked for, a remix's original, a deletion) is kept in ``store.videos``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection

from reelgen import previews
from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from reelgen.service.context import Context
from reelgen.service.results import ResultFile, result_for_owner
from reelgen.service.tasks import owned_task, submit
from reelgen.service.uploads import upload
from reelgen.store import tasks, uploads, videos
from reelgen.video_view import DEFAULT_MODEL, DEFAULT_SECONDS, DEFAULT_SIZE, MODELS, SIZES, size_for, video_object

__all__ = [
    "CREATE_FIELDS",
    "Preview",
    "content",
    "create",
    "delete",
    "door_error",
    "list_videos",
    "remix",
    "retrieve",
]

#: The fields ``POST /v1/videos`` takes (``callback_url`` is ours: where ``video.completed`` /
#: ``video.failed`` is POSTed); anything else is refused, so a typo never passes silently.
CREATE_FIELDS = ("prompt", "model", "seconds", "size", "input_reference", "callback_url")
MAX_PAGE = 100
DEFAULT_PAGE = 20
Variant = Literal["video", "thumbnail", "spritesheet"]

#: the Kling field a message names -> the OpenAI parameter it came from
_PARAMS = (
    ("input.prompt", "prompt"),
    ("input.duration", "seconds"),
    ("input.image_urls", "input_reference"),
    ("input.aspect_ratio", "size"),
    ("input.mode", "size"),
    ("input.", ""),
)


def _invalid(param: str, message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid '{param}': {message}",
        details=[{"field": param, "message": message}],
    )


def door_error(exc: ReelgenError) -> ReelgenError:
    """A service error in this door's words: Kling field names become the OpenAI parameters."""

    def words(text: str) -> str:
        for kling, openai in _PARAMS:
            text = text.replace(kling, openai)
        return text

    message = words(exc.message)
    if exc.code == ErrorCode.TASK_NOT_FOUND and not exc.details:
        message = "No video found with that id."
    details = None
    if exc.details:
        details = [{**d, "field": words(str(d.get("field", ""))).split(".")[0]} for d in exc.details]
    return ReelgenError(exc.code, message, details=details, status=exc.status, headers=exc.headers)


# --------------------------------------------------------------------------------------------
# Create, remix
# --------------------------------------------------------------------------------------------
def _seconds(value: Any) -> int:
    if value is None:
        return DEFAULT_SECONDS
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        return int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 10**6:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _invalid("seconds", 'a whole number of seconds, such as "8"')


def _reference(ctx: Context, account_id: str, value: Any, image: bytes | None) -> str | None:
    """The ``image_urls`` entry of ``input_reference``: an uploaded file, ``{image_url}`` / a URL
    string, or ``{file_id}`` (the id ``POST /api/v1/upload`` answered)."""
    if image is not None:
        try:
            return str(upload(ctx, account_id, image)["url"])
        except ReelgenError as exc:
            raise ReelgenError(
                exc.code, exc.message, details=[{"field": "input_reference", "message": exc.message}]
            ) from None
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and len(value) == 1:
        if isinstance(value.get("image_url"), str):
            return str(value["image_url"])
        if isinstance(value.get("file_id"), str):
            return uploads.url_for(str(value["file_id"]))
    raise _invalid("input_reference", 'an image file, an image URL, {"image_url": ...} or {"file_id": ...}')


def _generate_body(
    ctx: Context, account_id: str, fields: Mapping[str, Any], image: bytes | None
) -> tuple[dict[str, Any], str, str]:
    """The ``/generate`` body for an OpenAI create request, and the model id and size it asked for."""
    unknown = sorted(set(fields) - set(CREATE_FIELDS))
    if unknown:
        raise _invalid(unknown[0], f"unknown parameter (this route takes {', '.join(CREATE_FIELDS)})")
    nulls = sorted(k for k, v in fields.items() if v is None and k != "callback_url")
    if nulls:
        raise _invalid(nulls[0], "null is not a value here; leave the parameter out for its default")
    model = fields.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or model not in MODELS:
        raise ReelgenError(
            ErrorCode.INVALID_MODEL,
            f"Invalid 'model': {model!r} is not one of {', '.join(MODELS)}.",
            details=[{"field": "model", "message": "unknown model"}],
        )
    size = fields.get("size", DEFAULT_SIZE)
    if not isinstance(size, str) or size not in SIZES:
        raise _invalid("size", f"one of {', '.join(SIZES)}")
    ratio, mode = SIZES[size]
    seconds = _seconds(fields.get("seconds"))
    reference = _reference(ctx, account_id, fields.get("input_reference"), image)
    inp: dict[str, Any] = {"duration": seconds, "mode": mode, "audio": True}
    if "prompt" in fields:
        inp["prompt"] = fields["prompt"]
    kling = model if model in (TEXT_TO_VIDEO, IMAGE_TO_VIDEO) else (IMAGE_TO_VIDEO if reference else TEXT_TO_VIDEO)
    if reference is not None:
        inp["image_urls"] = [reference]
    elif kling == TEXT_TO_VIDEO:
        inp["aspect_ratio"] = ratio
    body: dict[str, Any] = {"model": kling, "input": inp}
    if fields.get("callback_url") is not None:
        body["callback_url"] = fields["callback_url"]
    return body, model, size


def _submit(
    ctx: Context,
    account_id: str,
    body: dict[str, Any],
    *,
    model: str,
    size: str,
    remixed_from: str | None = None,
    seed: int | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    def remember(conn: Connection, task_id: str) -> None:
        videos.record(conn, task_id, model=model, size=size, remixed_from=remixed_from)

    try:
        accepted = submit(ctx, account_id, body, idempotency_key=idempotency_key, seed=seed, on_create=remember)
    except ReelgenError as exc:
        raise door_error(exc) from None
    return retrieve(ctx, account_id, str(accepted["id"]))


def create(
    ctx: Context,
    account_id: str,
    fields: Mapping[str, Any],
    image: bytes | None = None,
    *,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """``POST /v1/videos``: queue a task (and reserve its price) from OpenAI's fields."""
    body, model, size = _generate_body(ctx, account_id, fields, image)
    return _submit(ctx, account_id, body, model=model, size=size, idempotency_key=idempotency_key)


def remix(
    ctx: Context, account_id: str, video_id: str, prompt: Any, *, idempotency_key: str | None = None
) -> dict[str, Any]:
    """``POST /v1/videos/{id}/remix``: a new task with the original's settings and seed and a new prompt."""
    row, video = _owned(ctx, account_id, video_id)
    if row.status != TaskStatus.COMPLETED:
        raise ReelgenError(
            ErrorCode.NO_RESULT, f"Only a completed video can be remixed; this one is {row.status.value}."
        )
    body: dict[str, Any] = {"model": row.model, "input": {**row.input, "prompt": prompt}}
    if prompt is None:
        del body["input"]["prompt"]
    if row.callback_url:
        body["callback_url"] = row.callback_url
    model = video.model if video is not None and video.model else row.model
    size = (
        video.size
        if video is not None and video.size
        else size_for(row.input.get("aspect_ratio"), row.input.get("mode"))
    )
    return _submit(
        ctx,
        account_id,
        body,
        model=model,
        size=size,
        remixed_from=row.id,
        seed=row.seed,
        idempotency_key=idempotency_key,
    )


# --------------------------------------------------------------------------------------------
# Read, list, delete
# --------------------------------------------------------------------------------------------
def _owned(ctx: Context, account_id: str, video_id: str) -> tuple[tasks.TaskRow, videos.Video | None]:
    """The caller's video that was not deleted (``TASK_NOT_FOUND`` otherwise, as for any foreign id)."""
    try:
        row, _, _ = owned_task(ctx, account_id, video_id)
    except ReelgenError as exc:
        raise door_error(exc) from None
    video = ctx.db.run(lambda conn: videos.get(conn, row.id))
    if video is not None and video.deleted_at is not None:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "No video found with that id (it was deleted).")
    return row, video


def retrieve(ctx: Context, account_id: str, video_id: str) -> dict[str, Any]:
    row, video = _owned(ctx, account_id, video_id)
    return video_object(row, video)


def list_videos(
    ctx: Context, account_id: str, *, after: str | None = None, limit: int = DEFAULT_PAGE, order: str = "desc"
) -> dict[str, Any]:
    """``GET /v1/videos``: ``{object: "list", data, first_id, last_id, has_more}``, ``after`` = the
    last id of the previous page."""
    if not 1 <= limit <= MAX_PAGE:
        raise _invalid("limit", f"must be 1-{MAX_PAGE}")
    if order not in ("asc", "desc"):
        raise _invalid("order", "asc or desc")
    start = None
    if after is not None:
        try:
            anchor, _, _ = owned_task(ctx, account_id, after)
        except ReelgenError:
            message = "No video found with the id given as 'after'."
            raise ReelgenError(
                ErrorCode.TASK_NOT_FOUND, message, details=[{"field": "after", "message": message}]
            ) from None
        start = (anchor.created_at, anchor.id)

    def read(conn: Connection) -> tuple[list[tasks.TaskRow], dict[str, videos.Video]]:
        rows = videos.page(conn, account_id, limit=limit + 1, after=start, ascending=order == "asc")
        return rows, videos.get_many(conn, [r.id for r in rows])

    rows, found = ctx.db.run(read)
    page = rows[:limit]
    data = [video_object(r, found.get(r.id)) for r in page]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def _preview_key(result_key: str, variant: str) -> str:
    stem = result_key.rsplit(".", 1)[0]
    return f"{stem}.{variant}.{'webp' if variant == 'thumbnail' else 'jpg'}"


def delete(ctx: Context, account_id: str, video_id: str) -> dict[str, Any]:
    """``DELETE /v1/videos/{id}``: remove the stored result (and its previews); the task row and
    its ledger entries stay, and ``/api/v1`` shows the task without a result from now on."""
    row, _ = _owned(ctx, account_id, video_id)
    if not row.status.is_terminal:
        raise ReelgenError(
            ErrorCode.NO_RESULT,
            f"The video is {row.status.value}; only a completed or failed video can be deleted "
            "(cancel it first with POST /api/v1/tasks/{id}/cancel).",
        )
    key = ctx.db.run(lambda conn: videos.delete_result(conn, row.id, ctx.clock()), immediate=True)
    if key:
        for stored in (key, _preview_key(key, "thumbnail"), _preview_key(key, "spritesheet")):
            ctx.storage.delete(stored)
    return {"id": row.id, "object": "video.deleted", "deleted": True}


# --------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preview:
    """A still image made from the video (``variant=thumbnail|spritesheet``)."""

    data: bytes
    media_type: str
    filename: str


def content(ctx: Context, account_id: str, video_id: str, variant: str) -> ResultFile | Preview:
    """The MP4 (``variant=video``) or a still made from it, made once and then kept in storage."""
    if variant not in ("video", "thumbnail", "spritesheet"):
        raise _invalid("variant", "video, thumbnail or spritesheet")
    _owned(ctx, account_id, video_id)
    try:
        result = result_for_owner(ctx, account_id, video_id)
    except ReelgenError as exc:
        raise door_error(exc) from None
    if variant == "video":
        return result
    key = _preview_key(result.key, variant)
    media_type, ext = ("image/webp", "webp") if variant == "thumbnail" else ("image/jpeg", "jpg")
    with result.file as video:  # opened by ``result_for_owner``; closed here whatever happens
        if ctx.storage.exists(key):
            with ctx.storage.open(key) as f:
                return Preview(f.read(), media_type, f"{video_id}.{variant}.{ext}")
        data = _make(variant, video)
    scratch = ctx.storage.temp_path(f"preview-{video_id}-{variant}")
    try:
        scratch.write_bytes(data)
        ctx.storage.put(key, scratch)
    finally:
        scratch.unlink(missing_ok=True)
    return Preview(data, media_type, f"{video_id}.{variant}.{ext}")


def _make(variant: str, src: Any) -> bytes:
    return previews.thumbnail_webp(src) if variant == "thumbnail" else previews.spritesheet_jpeg(src)
