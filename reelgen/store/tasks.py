"""The task table is the queue: create, claim, heartbeat, finish, requeue, expire, cancel.

Every state change is a conditional write, ``UPDATE ... WHERE id = :id AND status = :expected AND
attempt = :attempt``, that reports whether it won. ``attempt`` is a fencing token: each claim
increments it and every later write by that worker names it, so a worker whose lease expired (and
whose task another worker has claimed since) cannot overwrite the newer attempt, capture credits
or publish its result. Finishing moves the credits in the same transaction as the status change.

Call the writing functions inside ``db.run(fn, immediate=True)``: on SQLite that serialises them on
the write lock, on PostgreSQL claims use ``FOR UPDATE SKIP LOCKED`` and the ledger locks the account.
Which pending task a claim takes is the fair queue's choice (``store.fair``).

Over 400 lines on purpose: every verb here relies on the same fenced conditional write
(``_move``, checked against ``TaskStatus.can_move_to``), and keeping them in one module keeps that
invariant in one place.
"""

from __future__ import annotations

import json
import re
import statistics
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, or_, select, update

from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import fair, ledger, webhooks
from reelgen.store.tables import tasks
from reelgen.video_view import webhook_event
from reelgen.views import webhook_object

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection, RowMapping

__all__ = [
    "TASK_ID",
    "TaskRow",
    "cancel",
    "claim",
    "complete",
    "count_active",
    "count_pending",
    "create",
    "expected_cost_us",
    "expire_holds",
    "fail",
    "find_external",
    "get",
    "hand_back",
    "heartbeat",
    "is_task_id",
    "list_for_account",
    "queue_position",
    "queue_position_for_new",
    "queue_positions",
    "recent_run_seconds",
    "rescue_expired",
]

_PENDING = TaskStatus.PENDING.value
_PROCESSING = TaskStatus.PROCESSING.value
_ACTIVE = (_PENDING, _PROCESSING)
# attempts to claim before giving up when other workers keep winning the same rows
_CLAIM_TRIES = 8


@dataclass(frozen=True)
class TaskRow:
    """One row of ``tasks``."""

    id: str
    account_id: str
    model: str
    profile: str
    status: TaskStatus
    input: dict[str, Any] = field(hash=False)
    prompt: str
    price: int
    seed: int
    attempt: int
    failures: int
    max_attempts: int
    worker_id: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    progress: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    result_key: str | None
    result_duration: float | None
    result_has_audio: bool | None
    error_code: str | None
    error_message: str | None
    request_class: str | None = None
    callback_url: str | None = None
    external_task_id: str | None = None
    #: ``input.enhance_prompt``: the prompt each segment was conditioned on (set on completion)
    enhanced_prompts: tuple[str, ...] | None = None


def _row(m: RowMapping) -> TaskRow:
    return TaskRow(
        id=m["id"],
        account_id=m["account_id"],
        model=m["model"],
        profile=m["profile"],
        status=TaskStatus(m["status"]),
        input=json.loads(m["input"]),
        prompt=m["prompt"],
        price=int(m["price"]),
        seed=int(m["seed"]),
        attempt=int(m["attempt"]),
        failures=int(m["failures"]),
        max_attempts=int(m["max_attempts"]),
        worker_id=m["worker_id"],
        lease_expires_at=m["lease_expires_at"],
        heartbeat_at=m["heartbeat_at"],
        progress=int(m["progress"]),
        created_at=m["created_at"],
        started_at=m["started_at"],
        completed_at=m["completed_at"],
        result_key=m["result_key"],
        result_duration=None if m["result_duration"] is None else float(m["result_duration"]),
        result_has_audio=None if m["result_has_audio"] is None else bool(m["result_has_audio"]),
        error_code=m["error_code"],
        error_message=m["error_message"],
        request_class=m["request_class"],
        callback_url=m["callback_url"],
        external_task_id=m["external_task_id"],
        enhanced_prompts=None if m["enhanced_prompts"] is None else tuple(json.loads(m["enhanced_prompts"])),
    )


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _allowed(status: str, new: str) -> None:
    """Refuse a status change the state machine does not have (``TaskStatus.can_move_to``): a bug, not a race."""
    if not TaskStatus(status).can_move_to(TaskStatus(new)):
        raise ValueError(f"a task cannot move from {status} to {new}")


def _move(conn: Connection, task_id: str, status: str, attempt: int | None, /, **values: Any) -> bool:
    """The one conditional write: set ``values`` if the task is still in ``status`` (and ``attempt``)."""
    if "status" in values:
        _allowed(status, values["status"])
    stmt = update(tasks).where(tasks.c.id == task_id, tasks.c.status == status)
    if attempt is not None:
        stmt = stmt.where(tasks.c.attempt == attempt)
    return conn.execute(stmt.values(**values)).rowcount == 1


def create(
    conn: Connection,
    *,
    account_id: str,
    model: str,
    profile: str,
    input: dict[str, Any],
    prompt: str,
    price: int,
    seed: int,
    max_attempts: int,
    now: datetime,
    task_id: str | None = None,
    request_class: str | None = None,
    callback_url: str | None = None,
    external_task_id: str | None = None,
) -> TaskRow:
    """Insert a pending task. Reserve its price with ``ledger.reserve`` in the same transaction
    (before or after: the hold's reference to the task is checked at commit).

    ``task_id`` defaults to a new random UUID4 hex (122 random bits); pass one only to reserve first.
    ``request_class`` groups tasks whose run times predict each other's (see ``recent_run_seconds``);
    ``callback_url`` is owed a webhook when the task ends (see ``store.webhooks``);
    ``external_task_id`` is the caller's own id of the task (unique per account: a duplicate raises
    ``IntegrityError``; check ``find_external`` first under the account lock). The task's expected
    GPU time and its place in the fair queue (``store.fair``) are set here: the median of the
    class's recent runs, else the video's seconds.
    """
    if isinstance(price, bool) or not isinstance(price, int) or price <= 0:
        raise ValueError(f"price must be a positive number of credits (got {price!r})")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1 (got {max_attempts})")
    task_id = task_id or uuid.uuid4().hex
    if not is_task_id(task_id):
        raise ValueError(f"not a task id: {task_id!r}")
    cost_us = expected_cost_us(conn, request_class, input)
    place = fair.tag(conn, account_id, cost_us)
    conn.execute(
        insert(tasks).values(
            id=task_id,
            account_id=account_id,
            model=model,
            profile=profile,
            status=_PENDING,
            input=json.dumps(input, separators=(",", ":"), sort_keys=True),
            prompt=prompt,
            price=price,
            seed=seed,
            attempt=0,
            failures=0,
            max_attempts=max_attempts,
            progress=0,
            created_at=now,
            request_class=request_class,
            callback_url=callback_url,
            cost_us=cost_us,
            tier=place.tier,
            vstart=place.vstart,
            external_task_id=external_task_id,
        )
    )
    task = get(conn, task_id)
    assert task is not None
    return task


#: What a task id may be: ids are UUID4 hex, and callers may pass their own of this shape.
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_task_id(task_id: str) -> bool:
    """Whether ``task_id`` could name a task. Anything else (a NUL, which PostgreSQL refuses in
    text, non-ASCII, a path of any length) is unknown without a query."""
    return TASK_ID.fullmatch(task_id) is not None


def get(conn: Connection, task_id: str) -> TaskRow | None:
    if not is_task_id(task_id):
        return None
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).one_or_none()
    return None if row is None else _row(row._mapping)


def _require(conn: Connection, task_id: str) -> TaskRow:
    task = get(conn, task_id)
    if task is None:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, f"Task {task_id} not found")
    return task


def expected_cost_us(conn: Connection, request_class: str | None, input: dict[str, Any]) -> int:
    """A new task's expected GPU microseconds: the median run time of the latest completed tasks of
    its request class, else (no history yet) its video's seconds; at least a millisecond."""
    runs = recent_run_seconds(conn, request_class) if request_class is not None else []
    seconds = statistics.median(runs) if runs else float(input.get("duration") or 5)
    return max(1000, round(seconds * 1_000_000))


def queue_position(conn: Connection, task_id: str) -> int | None:
    """How many pending tasks will be claimed before this one (0 = next); None unless pending.

    The fair order of ``claim`` (``store.fair``) as things stand now; only tasks of the same
    profile count, since workers claim per profile (``claim(profile=...)``), and the ETA
    (``progress``) is built on the same number.
    """
    return queue_positions(conn, [task_id]).get(task_id)


def queue_positions(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """``queue_position`` of each pending task among ``task_ids``, in one query (others are absent)."""
    return fair.positions(conn, task_ids)


def queue_position_for_new(conn: Connection, account_id: str, profile: str) -> int:
    """How many pending tasks of ``profile`` would be claimed before a task ``account_id`` submitted now."""
    return fair.position_for_new(conn, account_id, profile)


def claim(
    conn: Connection,
    *,
    worker_id: str,
    lease_seconds: float,
    now: datetime,
    profile: str | None = None,
) -> TaskRow | None:
    """Take the pending task the fair order puts first (of ``profile``, if given; ``store.fair``)
    as a new attempt; None if none waits.

    One statement picks and moves the task (``UPDATE ... WHERE id = (SELECT ... ORDER BY ... LIMIT
    1 FOR UPDATE SKIP LOCKED) RETURNING``: concurrent workers on PostgreSQL take different tasks
    without waiting), one more moves the queue's clock.
    """
    _allowed(_PENDING, _PROCESSING)
    first = select(tasks.c.id).where(tasks.c.status == _PENDING)
    if profile is not None:
        first = first.where(tasks.c.profile == profile)
    first = first.order_by(*fair.claim_order()).limit(1)
    if _is_postgres(conn):
        first = first.with_for_update(skip_locked=True)
    taken = conn.execute(
        update(tasks)
        .where(tasks.c.id == first.scalar_subquery(), tasks.c.status == _PENDING)
        .values(
            status=_PROCESSING,
            attempt=tasks.c.attempt + 1,
            worker_id=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            started_at=now,
            progress=0,
        )
        .returning(*tasks.c)
    ).one_or_none()
    if taken is None:
        return None
    task = _row(taken._mapping)
    fair.started(conn, task.account_id, int(taken.vstart))
    return task


def heartbeat(
    conn: Connection,
    task_id: str,
    attempt: int,
    worker_id: str,
    *,
    lease_seconds: float,
    now: datetime,
    progress: int | None = None,
) -> bool:
    """Extend the lease (and record progress). False: this worker no longer owns the task, stop."""
    values: dict[str, Any] = {
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "heartbeat_at": now,
    }
    if progress is not None:
        values["progress"] = max(0, min(100, int(progress)))
    stmt = (
        update(tasks)
        .where(
            tasks.c.id == task_id,
            tasks.c.status == _PROCESSING,
            tasks.c.attempt == attempt,
            tasks.c.worker_id == worker_id,
        )
        .values(**values)
    )
    return conn.execute(stmt).rowcount == 1


def complete(
    conn: Connection,
    task_id: str,
    attempt: int,
    *,
    result_key: str,
    duration: float,
    has_audio: bool,
    now: datetime,
    enhanced_prompts: tuple[str, ...] | None = None,
) -> bool:
    """Attempt ``attempt`` succeeded: publish the result (and the prompts the enhancer wrote, one
    per segment, when the request asked for them) and capture the hold, together.

    False (nothing written) if that attempt no longer owns the task.
    """
    extra = {} if enhanced_prompts is None else {"enhanced_prompts": json.dumps(list(enhanced_prompts))}
    won = _move(
        conn,
        task_id,
        _PROCESSING,
        attempt,
        status=TaskStatus.COMPLETED.value,
        result_key=result_key,
        result_duration=float(duration),
        result_has_audio=bool(has_audio),
        progress=100,
        completed_at=now,
        lease_expires_at=None,
        **extra,
    )
    if won and not ledger.capture(conn, task_id, now):
        raise RuntimeError(f"task {task_id} was processing but its hold was already resolved")
    if won:
        _ended(conn, task_id, now)
    return won


def fail(conn: Connection, task_id: str, attempt: int, *, code: str, message: str, now: datetime) -> bool:
    """Attempt ``attempt`` failed for good: record the error and release the hold, together.

    False (nothing written) if that attempt no longer owns the task.
    """
    won = _move(
        conn,
        task_id,
        _PROCESSING,
        attempt,
        status=TaskStatus.FAILED.value,
        error_code=str(code),
        error_message=message,
        completed_at=now,
        lease_expires_at=None,
    )
    _release_or_raise(conn, task_id, now, won)
    return won


def _release_or_raise(conn: Connection, task_id: str, now: datetime, won: bool) -> None:
    """After a move to failed or cancelled: release the hold and owe the webhook, if the move won."""
    if won and not ledger.release(conn, task_id, now):
        raise RuntimeError(f"task {task_id} was active but its hold was already resolved")
    if won:
        _ended(conn, task_id, now)


def _ended(conn: Connection, task_id: str, now: datetime) -> None:
    """The task just ended in this transaction: write its webhook to the outbox, if it has one."""
    task = _require(conn, task_id)
    if not task.callback_url:
        return
    from reelgen.store import videos  # it reads task rows through this module

    data = webhook_object(task)
    event, body = f"task.{task.status.value}", None
    door = videos.get(conn, task.id)
    if door is not None and door.model is not None:  # created through /v1/videos: OpenAI's event shape
        event, body = webhook_event(task, "evt_" + uuid.uuid4().hex)
    webhooks.enqueue(
        conn,
        task_id=task.id,
        account_id=task.account_id,
        url=task.callback_url,
        event=event,
        data=data,
        now=now,
        body=body,
    )


_REQUEUED: dict[str, Any] = {
    "status": _PENDING,
    "worker_id": None,
    "lease_expires_at": None,
    "heartbeat_at": None,
    "started_at": None,
    "progress": 0,
}


def hand_back(conn: Connection, task_id: str, attempt: int, now: datetime) -> bool:
    """A draining worker returns its task to the queue; this does not count as a failure."""
    del now  # the requeue keeps the task's place in the queue (its created_at)
    return _move(conn, task_id, _PROCESSING, attempt, **_REQUEUED)


def rescue_expired(conn: Connection, now: datetime) -> list[tuple[str, TaskStatus]]:
    """Recover tasks whose worker stopped heartbeating: requeue them, or fail them for good.

    Each expired lease counts one failure; a task that reaches ``max_attempts`` failures is failed
    with ``GENERATION_FAILED`` and its hold released, so a poison task never runs forever.
    """
    stmt = (
        select(tasks.c.id, tasks.c.attempt, tasks.c.failures, tasks.c.max_attempts)
        .where(tasks.c.status == _PROCESSING, tasks.c.lease_expires_at < now)
        .order_by(tasks.c.id)
    )
    if _is_postgres(conn):
        stmt = stmt.with_for_update(skip_locked=True)
    done: list[tuple[str, TaskStatus]] = []
    for row in conn.execute(stmt).all():
        failures = int(row.failures) + 1
        if failures < int(row.max_attempts):
            outcome, values = TaskStatus.PENDING, {**_REQUEUED, "failures": failures}
        else:
            outcome = TaskStatus.FAILED
            values = {
                "status": TaskStatus.FAILED.value,
                "failures": failures,
                "error_code": ErrorCode.GENERATION_FAILED.value,
                "error_message": f"The generation failed after {failures} attempts.",
                "completed_at": now,
                "lease_expires_at": None,
            }
        _allowed(_PROCESSING, values["status"])
        won = (
            conn.execute(
                update(tasks)
                .where(
                    tasks.c.id == row.id,
                    tasks.c.status == _PROCESSING,
                    tasks.c.attempt == row.attempt,
                    tasks.c.lease_expires_at < now,
                )
                .values(**values)
            ).rowcount
            == 1
        )
        if won:
            if outcome is TaskStatus.FAILED:
                _release_or_raise(conn, row.id, now, won)
            done.append((row.id, outcome))
    return done


def expire_holds(conn: Connection, *, max_age_seconds: float, now: datetime) -> list[str]:
    """Fail every pending or processing task created more than ``max_age_seconds`` ago (``TIMEOUT``)
    and release its hold, like an expired card authorisation. Returns the ids."""
    cutoff = now - timedelta(seconds=max_age_seconds)
    stmt = (
        select(tasks.c.id, tasks.c.status, tasks.c.attempt)
        .where(tasks.c.status.in_(_ACTIVE), tasks.c.created_at < cutoff)
        .order_by(tasks.c.created_at, tasks.c.id)
    )
    if _is_postgres(conn):
        stmt = stmt.with_for_update(skip_locked=True)
    expired: list[str] = []
    for row in conn.execute(stmt).all():
        won = _move(
            conn,
            row.id,
            row.status,
            row.attempt,
            status=TaskStatus.FAILED.value,
            error_code=ErrorCode.TIMEOUT.value,
            error_message=f"The task did not finish within {max_age_seconds:g} seconds.",
            completed_at=now,
            lease_expires_at=None,
        )
        _release_or_raise(conn, row.id, now, won)
        if won:
            expired.append(row.id)
    return expired


def cancel(conn: Connection, task_id: str, now: datetime) -> TaskRow:
    """Cancel a pending or processing task and release its hold; returns the task as it now is.

    A processing task is moved to ``cancelled`` under its current attempt: its worker's next
    heartbeat is refused, so the render stops at the next step boundary and its output is never
    published (completing is conditional on ``processing``). Racing a completion, exactly one of
    the two conditional writes wins, and the hold is captured or released once. A task already
    cancelled is returned unchanged. ``TASK_NOT_FOUND`` for an unknown id; ``NOT_CANCELLABLE`` once
    it completed or failed.
    """
    for _ in range(_CLAIM_TRIES):
        task = _require(conn, task_id)
        if task.status not in (TaskStatus.PENDING, TaskStatus.PROCESSING):
            break
        won = _move(
            conn,
            task_id,
            task.status.value,
            task.attempt,
            status=TaskStatus.CANCELLED.value,
            error_code=ErrorCode.CANCELLED.value,
            error_message="The task was cancelled.",
            completed_at=now,
            lease_expires_at=None,
        )
        _release_or_raise(conn, task_id, now, won)
        # lost: a worker claimed it or finished meanwhile; look again
    task = _require(conn, task_id)
    if task.status is TaskStatus.CANCELLED:
        return task
    raise ReelgenError(ErrorCode.NOT_CANCELLABLE, f"The task is {task.status.value} and cannot be cancelled.")


def list_for_account(
    conn: Connection,
    account_id: str,
    *,
    status: TaskStatus | str | None = None,
    limit: int = 20,
    before: tuple[datetime, str] | None = None,
    external_task_id: str | None = None,
) -> list[TaskRow]:
    """The account's tasks, newest first; ``before`` = (created_at, id) of the last row seen;
    ``external_task_id`` keeps only the task the caller gave that id (at most one)."""
    stmt = (
        select(tasks)
        .where(tasks.c.account_id == account_id)
        .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
        .limit(max(0, limit))
    )
    if status is not None:
        stmt = stmt.where(tasks.c.status == TaskStatus(status).value)
    if external_task_id is not None:
        stmt = stmt.where(tasks.c.external_task_id == external_task_id)
    if before is not None:
        created_at, last_id = before
        stmt = stmt.where(
            or_(
                tasks.c.created_at < created_at,
                and_(tasks.c.created_at == created_at, tasks.c.id < last_id),
            )
        )
    return [_row(r._mapping) for r in conn.execute(stmt)]


def find_external(conn: Connection, account_id: str, external_task_id: str) -> str | None:
    """The id of the account's task with this ``external_task_id``, if any."""
    found = conn.execute(
        select(tasks.c.id).where(tasks.c.account_id == account_id, tasks.c.external_task_id == external_task_id)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def count_active(conn: Connection, account_id: str) -> int:
    """The account's pending plus processing tasks (for the per-account cap)."""
    n = conn.execute(
        select(func.count()).select_from(tasks).where(tasks.c.account_id == account_id, tasks.c.status.in_(_ACTIVE))
    ).scalar_one()
    return int(n)


def recent_run_seconds(conn: Connection, request_class: str, *, limit: int = 20) -> list[float]:
    """Run times (claim to completion, seconds) of the latest ``limit`` completed tasks of a class."""
    rows = conn.execute(
        select(tasks.c.started_at, tasks.c.completed_at)
        .where(
            tasks.c.request_class == request_class,
            tasks.c.status == TaskStatus.COMPLETED.value,
            tasks.c.started_at.is_not(None),
            tasks.c.completed_at.is_not(None),
        )
        .order_by(tasks.c.completed_at.desc())
        .limit(limit)
    ).all()
    return [max(0.0, (r.completed_at - r.started_at).total_seconds()) for r in rows]


def count_pending(conn: Connection, profile: str | None = None) -> int:
    """Pending tasks in the queue (of ``profile``, if given)."""
    stmt = select(func.count()).select_from(tasks).where(tasks.c.status == _PENDING)
    if profile is not None:
        stmt = stmt.where(tasks.c.profile == profile)
    return int(conn.execute(stmt).scalar_one())
