"""The OpenAI video object: the ``/v1/videos`` door's rendering of a task, beside ``views.py``.

The same task row that ``views.task_object`` renders for ``/api/v1`` is shown here in the shape of
the OpenAI Videos API reference; the fields only that door knows (the OpenAI ``model`` and ``size``
asked for, the video a remix came from) come from ``store.videos``. Pure functions, no I/O.

The size table (the documented mapping, docs/api.md "/v1/videos"): a ``size`` picks the aspect
ratio and the mode; the model id is kept as given (ours name the model outright).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reelgen.domain import TaskStatus
from reelgen.views import task_object

if TYPE_CHECKING:
    from reelgen.store.tasks import TaskRow
    from reelgen.store.videos import Video

__all__ = [
    "DEFAULT_SECONDS",
    "DEFAULT_SIZE",
    "MODELS",
    "SIZES",
    "STATUS",
    "size_for",
    "unix",
    "video_object",
    "webhook_event",
]

#: size -> (aspect ratio, mode) of the task it creates
SIZES: dict[str, tuple[str, str]] = {
    "720x1280": ("9:16", "standard"),
    "1280x720": ("16:9", "standard"),
    "720x720": ("1:1", "standard"),
    "1024x1792": ("9:16", "professional"),
    "1792x1024": ("16:9", "professional"),
    "1024x1024": ("1:1", "professional"),
}
#: the model ids taken (every one takes every size; our own ids are accepted too)
MODELS: tuple[str, ...] = (
    "sora-2",
    "sora-2-2025-10-06",
    "sora-2-2025-12-08",
    "sora-2-pro",
    "sora-2-pro-2025-10-06",
    "kling-3-0-text-to-video",
    "kling-3-0-image-to-video",
)
DEFAULT_MODEL = "sora-2"
DEFAULT_SIZE = "720x1280"
DEFAULT_SECONDS = 4
#: task status -> video status (a cancelled task is a failed video whose error says so)
STATUS: dict[TaskStatus, str] = {
    TaskStatus.PENDING: "queued",
    TaskStatus.PROCESSING: "in_progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}


def unix(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp())


def size_for(aspect_ratio: str | None, mode: str | None) -> str:
    """The table's size for a task's ratio and mode (a task submitted through ``/api/v1``)."""
    wanted = (aspect_ratio or "16:9", mode or "standard")
    return next((size for size, value in SIZES.items() if value == wanted), DEFAULT_SIZE)


def video_object(row: TaskRow, video: Video | None = None) -> dict[str, Any]:
    """The OpenAI video object of a task; ``video`` is its ``store.videos`` row, if it has one."""
    task = task_object(row)
    inp = row.input
    error = None
    if task["error"] is not None:
        error = {"code": str(task["error"]["code"]).lower(), "message": task["error"]["message"]}
    ended = row.status.is_terminal
    return {
        "id": row.id,
        "object": "video",
        "model": (video.model if video is not None and video.model else row.model),
        "status": STATUS[row.status],
        "progress": task["progress"],
        "created_at": unix(row.created_at),
        "completed_at": unix(row.completed_at) if ended else None,
        "expires_at": None,  # results are kept until deleted
        "prompt": row.prompt,
        "size": (
            video.size if video is not None and video.size else size_for(inp.get("aspect_ratio"), inp.get("mode"))
        ),
        "seconds": str(inp.get("duration", DEFAULT_SECONDS)),
        "remixed_from_video_id": video.remixed_from if video is not None else None,
        "error": error,
    }


def webhook_event(row: TaskRow, event_id: str) -> tuple[str, dict[str, Any]]:
    """The event type and body of the webhook owed when a ``/v1/videos`` task ends (OpenAI's shape)."""
    kind = "video.completed" if row.status == TaskStatus.COMPLETED else "video.failed"
    body = {
        "id": event_id,
        "object": "event",
        "created_at": unix(row.completed_at),
        "type": kind,
        "data": {"id": row.id},
    }
    return kind, body
