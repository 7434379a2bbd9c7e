"""Fair queueing across accounts: the order in which pending tasks are claimed.

Policy (start-time fair queueing over accounts, with strict priority tiers):

* every account has a **tier** (``high``, ``normal``, ``batch``; default ``normal``) and a
  **weight** (1-1000, default 1), both set by the operator (``reelgen keys limits``);
* every task carries its **expected GPU time** (``tasks.cost_us``: the median run time of recent
  tasks of the same request class, else its video's seconds);
* every account has a **virtual time** (``account_queue.vtime``): where its next task starts. A
  new task starts at the account's virtual time, or at the queue's **clock** if that is later (the
  largest start of any claimed task: an account that was idle earns no credit for later, so it is
  "the least GPU time *recently*"), and moves the account's virtual time on by
  ``cost_us // weight``. The task keeps that start (``tasks.vstart``) and the account's tier
  (``tasks.tier``);
* workers claim the pending task with the smallest ``(tier, vstart, created_at, id)``: a higher
  tier always first (``batch`` work runs only when nothing else waits), then the smallest start,
  which interleaves accounts by weighted GPU time and keeps each account's tasks FIFO.

So the tags are assigned in the transaction that creates the task (one atomic ``UPDATE ...
RETURNING`` of the account's row) and the claim stays the single ``SELECT ... ORDER BY ... LIMIT
1`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) it always was, over the partial index
``ix_tasks_pending_fair`` (pending tasks by profile, tier, start, age): one index probe whatever
the queue's length. The bookkeeping lives in the database, so it holds across API replicas and
workers. A task's queue position is the number of pending tasks of its profile before it in that
same order, which is exactly the order they will be claimed in unless a task from an account with
less recent GPU time (or a higher tier) arrives meanwhile. Scheduling never touches the ledger.

A weight change applies to tasks submitted afterwards; a tier change also moves the account's
pending tasks. A requeued task (handed back, or its lease expired) keeps its start, so it goes
back to the head of its account's line. A cancelled pending task's GPU time stays charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store.tables import QUEUE_TIERS, account_queue, accounts, tasks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection
    from sqlalchemy.sql.elements import ColumnElement

__all__ = [
    "DEFAULT_TIER",
    "MAX_WEIGHT",
    "TIERS",
    "Schedule",
    "Tag",
    "claim_order",
    "get_schedule",
    "position_for_new",
    "positions",
    "set_schedule",
    "started",
    "tag",
]

TIERS = QUEUE_TIERS
DEFAULT_TIER = "normal"
MAX_WEIGHT = 1000
_PENDING = "pending"


@dataclass(frozen=True)
class Schedule:
    """An account's place in the fair queue."""

    weight: int
    tier: str
    #: where the account's next task starts (expected GPU microseconds divided by weight)
    vtime: int


@dataclass(frozen=True)
class Tag:
    """Where a new task goes in the claim order: its account's tier and its start."""

    tier: int
    vstart: int


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _greatest(conn: Connection, a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
    return func.greatest(a, b) if _is_postgres(conn) else func.max(a, b)


def _insert_missing(conn: Connection, account_id: str) -> None:
    """Create the account's row (weight 1, normal tier) unless another transaction already did."""
    dialect_insert = postgresql.insert if _is_postgres(conn) else sqlite.insert
    conn.execute(dialect_insert(account_queue).values(account_id=account_id).on_conflict_do_nothing())


def _clock() -> ColumnElement[int]:
    """The queue's clock: the largest start of any claimed task (0 before the first claim)."""
    return select(func.coalesce(func.max(account_queue.c.last_start), 0)).scalar_subquery()


def tag(conn: Connection, account_id: str, cost_us: int) -> Tag:
    """A new task of ``account_id`` expected to take ``cost_us``: its tier and start, and the
    account's virtual time moved past it, in one atomic update (concurrent submits of one account
    get consecutive starts)."""
    _insert_missing(conn, account_id)
    q = account_queue
    row = conn.execute(
        update(q)
        .where(q.c.account_id == account_id)
        .values(vtime=_greatest(conn, q.c.vtime, _clock()) + cost_us // q.c.weight)
        .returning(q.c.vtime, q.c.weight, q.c.tier)
    ).one()
    return Tag(tier=int(row.tier), vstart=int(row.vtime) - cost_us // int(row.weight))


def claim_order() -> tuple[ColumnElement[object], ...]:
    """The columns pending tasks are claimed in (``ix_tasks_pending_fair`` after the profile)."""
    return (tasks.c.tier, tasks.c.vstart, tasks.c.created_at, tasks.c.id)


def started(conn: Connection, account_id: str, vstart: int) -> None:
    """A task of ``account_id`` that starts at ``vstart`` was claimed: move the queue's clock.

    On PostgreSQL a submit of the same account may hold the row until it commits; the claim does
    not wait for it (``SKIP LOCKED``): the clock then moves at that account's next claim, which
    only makes an idle account that joins meanwhile start a little earlier.
    """
    q = account_queue
    target = select(q.c.account_id).where(q.c.account_id == account_id, q.c.last_start < vstart)
    if _is_postgres(conn):
        target = target.with_for_update(skip_locked=True)
    conn.execute(
        update(q)
        .where(q.c.account_id.in_(target.scalar_subquery()))
        .values(last_start=_greatest(conn, q.c.last_start, literal(vstart)))
    )


def positions(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """How many pending tasks of the same profile are claimed before each pending task of
    ``task_ids`` (0 = next), in one query; tasks that are not pending are absent."""
    if not task_ids:
        return {}
    ahead = tasks.alias("ahead")

    def count(*where: ColumnElement[bool]) -> ColumnElement[int]:
        return (
            select(func.count())
            .select_from(ahead)
            .where(ahead.c.status == _PENDING, ahead.c.profile == tasks.c.profile, *where)
            .scalar_subquery()
        )

    # two index ranges (higher tiers; this tier up to this start) rather than one row comparison,
    # which SQLite would only narrow by tier
    count_ahead = count(ahead.c.tier < tasks.c.tier) + count(
        ahead.c.tier == tasks.c.tier,
        ahead.c.vstart <= tasks.c.vstart,
        tuple_(ahead.c.vstart, ahead.c.created_at, ahead.c.id) < tuple_(tasks.c.vstart, tasks.c.created_at, tasks.c.id),
    )
    rows = conn.execute(
        select(tasks.c.id, count_ahead).where(tasks.c.id.in_(list(task_ids)), tasks.c.status == _PENDING)
    ).all()
    return {row[0]: int(row[1]) for row in rows}


def position_for_new(conn: Connection, account_id: str, profile: str) -> int:
    """How many pending tasks of ``profile`` would be claimed before a task that ``account_id``
    submitted now (for an estimate: nothing is written)."""
    q = account_queue
    row = conn.execute(
        select(q.c.tier, _greatest(conn, q.c.vtime, _clock()).label("start")).where(q.c.account_id == account_id)
    ).one_or_none()
    if row is None:  # the account's first task: normal tier, at the clock
        tier, start = TIERS.index(DEFAULT_TIER), int(conn.execute(select(_clock())).scalar_one())
    else:
        tier, start = int(row.tier), int(row.start)
    pending = (tasks.c.status == _PENDING, tasks.c.profile == profile)
    higher = select(func.count()).select_from(tasks).where(*pending, tasks.c.tier < tier)
    same = select(func.count()).select_from(tasks).where(*pending, tasks.c.tier == tier, tasks.c.vstart <= start)
    return int(conn.execute(higher).scalar_one()) + int(conn.execute(same).scalar_one())


def get_schedule(conn: Connection, account_id: str) -> Schedule:
    """The account's weight, tier and virtual time (the defaults before its first task)."""
    row = conn.execute(select(account_queue).where(account_queue.c.account_id == account_id)).one_or_none()
    if row is None:
        return Schedule(weight=1, tier=DEFAULT_TIER, vtime=0)
    return Schedule(weight=int(row.weight), tier=TIERS[int(row.tier)], vtime=int(row.vtime))


def set_schedule(conn: Connection, account_id: str, *, weight: int | None, tier: str | None) -> None:
    """Operator: set the account's weight (1-1000; for tasks submitted from now on) and/or tier (its
    pending tasks move too); None leaves one as it is. ``ACCOUNT_NOT_FOUND``, ``INVALID_INPUT``."""
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).one_or_none() is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"Account {account_id} not found.")
    if weight is not None and (isinstance(weight, bool) or not 1 <= weight <= MAX_WEIGHT):
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"The weight is a whole number from 1 to {MAX_WEIGHT}.")
    if tier is not None and tier not in TIERS:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"The tier is one of {', '.join(TIERS)}.")
    _insert_missing(conn, account_id)
    values: dict[str, int] = {}
    if weight is not None:
        values["weight"] = weight
    if tier is not None:
        values["tier"] = TIERS.index(tier)
        conn.execute(
            update(tasks)
            .where(tasks.c.account_id == account_id, tasks.c.status == _PENDING)
            .values(tier=TIERS.index(tier))
        )
    if values:
        conn.execute(update(account_queue).where(account_queue.c.account_id == account_id).values(**values))
