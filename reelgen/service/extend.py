"""The extend model's rules: which task may be continued, by how much, and at what price.

An extension continues a *completed* task of the *same account* (an extension is a completed task
too, so extends chain). Everything is checked at submit, before any credit is reserved:

* an unknown id and another account's task answer exactly as ``GET /api/v1/tasks/{id}`` does
  (``TASK_NOT_FOUND``: no existence oracle);
* a task that is not completed, whose result was deleted (``DELETE /v1/videos/{id}``) or is no longer
  in storage, or that another profile made, is ``INVALID_INPUT`` on ``input.task_id``;
* the original and the extension together must not exceed ``MAX_EXTENDED_SECONDS``;
* the extension runs in the original's ``mode`` (a different ``mode`` is refused); ``audio`` defaults
  to whether the original has sound;
* the price is the added seconds x the original's mode rate (``pricing.extension_credits``).

The worker checks again when it runs (the result may be deleted in between): see
``reelgen.extension``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from reelgen import memory, pricing
from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import MAX_EXTENDED_SECONDS, ExtendRequest, GenerateInput, Mode
from reelgen.service.context import Context
from reelgen.store import tasks

__all__ = ["Extension", "check_original", "original_mode", "recheck", "resolve"]


@dataclass(frozen=True)
class Extension:
    """A checked extension: what is stored as the task's input, its price, and the original's result."""

    input: dict[str, Any]
    price: int
    #: the equivalent generation (mode, audio, duration) for run-time classes and memory checks
    equivalent: GenerateInput
    original_key: str


def _refuse(message: str, field_name: str = "input.task_id") -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid input: {field_name}: {message}",
        details=[{"field": field_name, "message": message}],
    )


def original_mode(row: tasks.TaskRow) -> Mode:
    """The mode a task ran in (an extension stores its original's)."""
    return Mode(row.input.get("mode", Mode.STANDARD.value))


def check_original(row: tasks.TaskRow | None, account_id: str, profile: str) -> tasks.TaskRow:
    """``row`` if it can be extended by ``account_id`` on a server of ``profile``, else the error."""
    if row is None or row.account_id != account_id:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "Task not found.")
    if row.status != TaskStatus.COMPLETED:
        raise _refuse(f"the task is {row.status.value}; only a completed task can be extended")
    if not row.result_key:
        raise _refuse("the task's result was deleted; it can no longer be extended")
    if row.profile != profile:
        raise _refuse(f"the task was made by profile {row.profile!r}; this server runs {profile!r}")
    return row


def resolve(ctx: Context, account_id: str, request: ExtendRequest) -> Extension:
    """Check an extend request against its original (read, not locked) and price it; raises the
    module's errors. ``submit`` re-checks the original inside its transaction (``recheck``)."""
    inp = request.input
    row = ctx.db.run(lambda conn: tasks.get(conn, inp.task_id))
    row = check_original(row, account_id, ctx.profile.name)
    assert row.result_key is not None  # check_original
    if not ctx.storage.exists(row.result_key):
        raise _refuse("the task's result has expired; it can no longer be extended")
    mode = original_mode(row)
    if inp.mode is not None and inp.mode != mode:
        raise _refuse(f"an extension runs in its original's mode ({mode.value})", "input.mode")
    audio = bool(row.result_has_audio) if inp.audio is None else inp.audio
    so_far = row.result_duration or 0.0
    if so_far + inp.duration > MAX_EXTENDED_SECONDS + 1e-6:
        raise _refuse(
            f"the task lasts {so_far:.2f} s; with {inp.duration} s more it would pass the {MAX_EXTENDED_SECONDS} s "
            "an extended video may last",
            "input.duration",
        )
    equivalent = GenerateInput(prompt=inp.prompt, duration=inp.duration, mode=mode, audio=audio)
    memory.check_fits(equivalent, ctx.profile)
    stored = {"task_id": row.id, "prompt": inp.prompt, "duration": inp.duration, "audio": audio, "mode": mode.value}
    price = pricing.extension_credits(mode, audio, inp.duration, ctx.profile)
    return Extension(input=stored, price=price, equivalent=equivalent, original_key=row.result_key)


def recheck(conn: Connection, account_id: str, ext: Extension) -> None:
    """In the creating transaction: the original still has the result ``resolve`` saw."""
    row = tasks.get(conn, ext.input["task_id"])
    if row is None or row.account_id != account_id:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "Task not found.")
    if row.result_key != ext.original_key:
        raise _refuse("the task's result was deleted; it can no longer be extended")
