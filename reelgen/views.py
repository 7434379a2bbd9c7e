"""One task view: the function that turns a task row into the API's task object, and its subsets.

``task_object`` is the ``data`` of ``GET /api/v1/tasks/{id}`` (and of the list, cancel and the
Server-Sent Events); ``webhook_object`` is the subset a webhook carries, built from it, so the two
can never disagree. Pure functions of the row (and the values the caller looked up: the result's
URL, the queue position, the ETA); no I/O, so the store can call them inside the transaction that
ends a task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reelgen.domain import TaskStatus
from reelgen.errors import FAILURE_KEYS, ErrorCode

if TYPE_CHECKING:
    from reelgen.store.tasks import TaskRow

__all__ = ["WEBHOOK_FIELDS", "credits_used", "iso", "task_object", "webhook_object"]

#: The task fields a webhook carries (its ``error`` without the ``key``).
WEBHOOK_FIELDS = ("id", "taskId", "model", "status", "creditsUsed", "createdAt", "completedAt", "error")
GENERIC_FAILURE = "The generation failed."


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, millisecond precision (the seed's ``createdAt`` shape)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def credits_used(row: TaskRow) -> int:
    """What the task costs the caller: its price unless it failed or was cancelled (released)."""
    return 0 if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else row.price


def _error(row: TaskRow) -> dict[str, Any] | None:
    if row.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        return None
    default = ErrorCode.CANCELLED if row.status == TaskStatus.CANCELLED else ErrorCode.GENERATION_FAILED
    code = row.error_code or default.value
    known = ErrorCode(code) if code in ErrorCode._value2member_map_ else None
    key = FAILURE_KEYS.get(known, "generic") if known is not None else "generic"
    return {"code": code, "key": key, "message": row.error_message or GENERIC_FAILURE}


def task_object(
    row: TaskRow,
    result_url: str | None = None,
    queue_position: int | None = None,
    eta_seconds: int | None = None,
) -> dict[str, Any]:
    """The API's task object (``schemas.TaskView``); ``result_url`` is shown once it completed."""
    result = output = None
    if row.status == TaskStatus.COMPLETED and row.result_key and result_url is not None:
        result = {"url": result_url, "type": "video"}
        output = {
            "url": result_url,
            "duration": row.result_duration,
            "format": "mp4",
            "hasAudio": bool(row.result_has_audio),
        }
    return {
        "id": row.id,
        "taskId": row.id,
        "model": row.model,
        "status": row.status.value,
        "mediaType": "video",
        "prompt": row.prompt,
        "input": row.input,
        "createdAt": iso(row.created_at),
        "startedAt": iso(row.started_at),
        "completedAt": iso(row.completed_at),
        "creditsUsed": credits_used(row),
        "progress": 100 if row.status == TaskStatus.COMPLETED else int(row.progress or 0),
        "queuePosition": queue_position,
        "etaSeconds": eta_seconds,
        "result": result,
        "output": output,
        "error": _error(row),
    }


def webhook_object(row: TaskRow) -> dict[str, Any]:
    """The ``data`` of the webhook sent when the task ended: a subset of its task object."""
    view = task_object(row)
    data = {name: view[name] for name in WEBHOOK_FIELDS}
    if data["error"] is not None:
        data["error"] = {"code": data["error"]["code"], "message": data["error"]["message"]}
    return data
