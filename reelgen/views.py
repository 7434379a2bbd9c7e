"""One task view: the function that turns a task row into the API's task object, and its subsets.

``task_object`` is the ``data`` of ``GET /api/v1/tasks/{id}`` (and of the list, cancel and the
Server-Sent Events); ``webhook_object`` is the subset a webhook carries, built from it, so the two
can never disagree.

A task object stays under ``MAX_TASK_JSON_BYTES`` whatever was submitted: the echoed ``input``
shows a ``data:`` URI as a short descriptor (media type, bytes, sha256 prefix) and is cut to
``INPUT_ECHO_BYTES`` (long strings shortened), the top-level ``prompt`` to ``PROMPT_ECHO_BYTES``
and the error message to ``ERROR_ECHO_CHARS``; the enhanced prompts (``enhancedPrompt``, or one per
shot in ``enhancedMultiPrompt``) take what is left, shortened only when the rest is at its largest.
Sizes are of the JSON as the API renders it (UTF-8).

Pure functions of the row (and the values the caller looked up: the result's
URL, the queue position, the ETA); no I/O, so the store can call them inside the transaction that
ends a task.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reelgen.domain import TaskStatus
from reelgen.errors import FAILURE_KEYS, ErrorCode

if TYPE_CHECKING:
    from reelgen.store.tasks import TaskRow

__all__ = [
    "MAX_TASK_JSON_BYTES",
    "WEBHOOK_FIELDS",
    "credits_used",
    "data_uri_descriptor",
    "echo_input",
    "iso",
    "task_object",
    "webhook_object",
]

#: The task fields a webhook carries (its ``error`` without the ``key``).
WEBHOOK_FIELDS = (
    "id",
    "taskId",
    "model",
    "status",
    "creditsUsed",
    "createdAt",
    "completedAt",
    "error",
    "externalTaskId",
)
GENERIC_FAILURE = "The generation failed."
#: The most one task object's JSON may take, and the budgets that keep it there.
MAX_TASK_JSON_BYTES = 16 * 1024
INPUT_ECHO_BYTES = 6000
PROMPT_ECHO_BYTES = 6000
ERROR_ECHO_CHARS = 500
#: The longest string the echo keeps whole, tried in turn until the input fits its budget.
_ECHO_STRING_LIMITS = (2000, 300, 80, 20)
#: room kept for the response envelope (``{"success":true,"data":...}``) around a task object
_ENVELOPE_MARGIN = 256


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace"))


def data_uri_descriptor(uri: str) -> str:
    """``<data:image/png, 2734512 bytes, sha256 3f2a9c1d0b7e>`` for a ``data:`` URI (the hash is of
    the decoded bytes; of the text when it is not valid base64)."""
    head, _, payload = uri.partition(",")
    media = head[5:].split(";", 1)[0][:100] or "text/plain"
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raw = payload.encode("utf-8", "backslashreplace")
    return f"<data:{media}, {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:12]}>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… (+{len(text) - limit} chars)"


def _shown(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return data_uri_descriptor(value) if value[:5].lower() == "data:" else _cut(value, limit)
    if isinstance(value, dict):
        return {k: _shown(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v, limit) for v in value]
    return value


def echo_input(inp: dict[str, Any]) -> dict[str, Any]:
    """The stored ``input`` as a task object shows it: ``data:`` URIs as descriptors, long strings
    shortened until it fits ``INPUT_ECHO_BYTES``."""
    shown: dict[str, Any] = {}
    for limit in _ECHO_STRING_LIMITS:
        shown = _shown(inp, limit)
        if _json_bytes(shown) <= INPUT_ECHO_BYTES:
            break
    return shown


def _prompt_echo(prompt: str) -> str:
    if _json_bytes(prompt) <= PROMPT_ECHO_BYTES:
        return prompt
    return _cut(prompt, PROMPT_ECHO_BYTES // 6)  # a character takes at most 6 bytes in JSON (\u0001)


def _fit(text: str, budget: int) -> str:
    """``text``, cut (with its ``… (+N chars)`` mark) to the longest prefix whose JSON fits ``budget`` bytes."""
    if _json_bytes(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest cut that fits
        mid = (low + high + 1) // 2
        if _json_bytes(_cut(text, mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    return _cut(text, low)


def _enhanced(row: TaskRow, view: dict[str, Any]) -> dict[str, Any]:
    """``enhancedPrompt`` (one generation) or ``enhancedMultiPrompt`` (``[{prompt, duration}]``, one
    per shot, as ``input.multi_prompt``), within what the task object has left of its budget."""
    out: dict[str, Any] = {"enhancedPrompt": None, "enhancedMultiPrompt": None}
    prompts = row.enhanced_prompts
    if row.status != TaskStatus.COMPLETED or not prompts:
        return out
    # the envelope, the two keys and each shot's duration fit in the margin
    left = MAX_TASK_JSON_BYTES - _json_bytes(view) - _ENVELOPE_MARGIN - 40 * len(prompts)
    each = max(0, left // len(prompts))
    shots = row.input.get("multi_prompt") if row.input.get("multi_shots") else None
    if isinstance(shots, list) and len(shots) == len(prompts) and all(isinstance(s, dict) for s in shots):
        out["enhancedMultiPrompt"] = [
            {"prompt": _fit(p, each), "duration": s.get("duration")} for p, s in zip(prompts, shots, strict=True)
        ]
    else:
        out["enhancedPrompt"] = _fit(prompts[0], each)
    return out


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
    return {"code": code, "key": key, "message": _cut(row.error_message or GENERIC_FAILURE, ERROR_ECHO_CHARS)}


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
    view = {
        "id": row.id,
        "taskId": row.id,
        "model": row.model,
        "status": row.status.value,
        "mediaType": "video",
        "prompt": _prompt_echo(row.prompt),
        "input": echo_input(row.input),
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
        "externalTaskId": row.external_task_id,
    }
    return view | _enhanced(row, view)


def webhook_object(row: TaskRow) -> dict[str, Any]:
    """The ``data`` of the webhook sent when the task ended: a subset of its task object."""
    view = task_object(row)
    data = {name: view[name] for name in WEBHOOK_FIELDS}
    if data["error"] is not None:
        data["error"] = {"code": data["error"]["code"], "message": data["error"]["message"]}
    return data
