"""Fair queueing across accounts: which pending task is claimed next, and where each one stands.

Policy (start-time fair queueing over accounts, with strict priority tiers):

* every account has a **tier** (``high``, ``normal``, ``batch``; default ``normal``) and a
  **weight** (1-1000, default 1), both set by the operator (``reelgen keys limits``);
* every task carries its **expected GPU time** (``tasks.cost_us``, fixed at submit from the
  median run time of recent tasks of the same request class, else its video's seconds);
* every account has a **virtual time** (``account_queue.vtime``): the expected GPU microseconds of
  the tasks it has had claimed, divided by its weight. A claim takes, from the highest tier that has
  pending work, the account with the smallest virtual time (ties: the smaller account id), takes
  that account's oldest pending task (FIFO within an account) and advances the account's virtual
  time by ``cost_us // weight``. ``batch`` work therefore runs only when nothing else waits;
* an account that had nothing pending joins at the queue's clock (the largest virtual time at
  which any task started, ``max(last_start)``), so being idle earns no credit for later: "least
  GPU time *recently*".

The bookkeeping lives in the database (one ``account_queue`` row per account, written in the
transactions that create and claim tasks), so it holds across API replicas and workers. A claim is
one statement that picks the task (PostgreSQL: a ``LATERAL`` head per account, ``FOR UPDATE SKIP
LOCKED``; SQLite: a correlated head under the write lock), then the fenced move and one
``account_queue`` update, in one short transaction. The partial index
``ix_tasks_pending_account_queue`` (pending tasks by account, profile, age) makes each account's
head one index probe, so a claim costs one probe per account looked at, whatever the queue's length.

The claim order is the order of ``(tier, start, account id)`` over pending tasks, where a task's
``start`` is its account's virtual time plus the charges of the account's older pending tasks;
``positions`` ranks by exactly that, so a reported queue position is the claim order as things
stand (a later submit from an account with less recent GPU time, or a higher tier, can still go
ahead). Scheduling never touches the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, exists, func, literal, select, update
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
    "Head",
    "Schedule",
    "charge",
    "get_schedule",
    "join",
    "pick",
    "position_for_new",
    "positions",
    "set_schedule",
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
    #: expected GPU microseconds claimed so far, divided by the weight
    vtime: int


@dataclass(frozen=True)
class Head:
    """The task a claim should take: the oldest pending task of the account due next."""

    task_id: str
    account_id: str
    #: the account's virtual time now (the task's start) and what claiming the task adds to it
    start: int
    charge: int


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _greatest(conn: Connection, a: ColumnElement[int], b: ColumnElement[int]) -> ColumnElement[int]:
    return func.greatest(a, b) if _is_postgres(conn) else func.max(a, b)


def _insert_missing(conn: Connection, account_id: str) -> None:
    """Create the account's row (weight 1, normal tier) unless another transaction already did."""
    dialect_insert = postgresql.insert if _is_postgres(conn) else sqlite.insert
    conn.execute(dialect_insert(account_queue).values(account_id=account_id).on_conflict_do_nothing())


def join(conn: Connection, account_id: str) -> None:
    """Before a task is created for ``account_id``: make sure the account is in the queue, and if it
    had nothing pending, bring its virtual time up to the queue's clock (idle time earns no credit)."""
    _insert_missing(conn, account_id)
    pending = exists().where(tasks.c.account_id == account_id, tasks.c.status == _PENDING)
    if conn.execute(select(pending)).scalar():
        return
    clock = select(func.coalesce(func.max(account_queue.c.last_start), 0)).scalar_subquery()
    conn.execute(
        update(account_queue)
        .where(account_queue.c.account_id == account_id)
        .values(vtime=_greatest(conn, account_queue.c.vtime, clock))
    )


def pick(conn: Connection, profile: str | None) -> Head | None:
    """The task the fair order claims next (of ``profile``, if given); None if none waits.

    On PostgreSQL the task row is locked ``FOR UPDATE SKIP LOCKED``: concurrent claims take the
    next task instead of waiting (of the same account or the next one).
    """
    q = account_queue
    where = [tasks.c.account_id == q.c.account_id, tasks.c.status == _PENDING]
    if profile is not None:
        where.append(tasks.c.profile == profile)
    order = (q.c.tier, q.c.vtime, q.c.account_id)
    if _is_postgres(conn):
        head = (
            select(tasks.c.id, tasks.c.cost_us)
            .where(*where)
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .lateral("head")
        )
        stmt = (
            select(head.c.id, head.c.cost_us, q.c.account_id, q.c.vtime, q.c.weight)
            .select_from(q.join(head, literal(True)))
            .order_by(*order)
            .limit(1)
        )
    else:  # SQLite: the immediate transaction holds the write lock, nobody else claims meanwhile
        first = select(tasks.c.id).where(*where).order_by(tasks.c.created_at, tasks.c.id).limit(1)
        head_id = first.scalar_subquery().correlate(q)
        stmt = (
            select(head_id.label("id"), literal(0).label("cost_us"), q.c.account_id, q.c.vtime, q.c.weight)
            .where(exists(first.correlate(q)))
            .order_by(*order)
            .limit(1)
        )
    row = conn.execute(stmt).one_or_none()
    if row is None:
        return None
    cost = int(row.cost_us)
    if not cost:  # SQLite: read the head's cost
        cost = int(conn.execute(select(tasks.c.cost_us).where(tasks.c.id == row.id)).scalar_one())
    return Head(task_id=row.id, account_id=row.account_id, start=int(row.vtime), charge=cost // int(row.weight))


def charge(conn: Connection, head: Head) -> None:
    """The head was claimed: advance its account's virtual time by the task's charge."""
    conn.execute(
        update(account_queue)
        .where(account_queue.c.account_id == head.account_id)
        .values(
            vtime=account_queue.c.vtime + head.charge,
            last_start=_greatest(conn, account_queue.c.last_start, literal(head.start)),
        )
    )


def _starts(by_profile: bool) -> ColumnElement[int]:
    """A pending task's start: its account's virtual time plus the charges of the account's older
    pending tasks (of the same profile when ``by_profile``), as ``pick`` and ``charge`` will advance it."""
    q = account_queue
    step = tasks.c.cost_us // q.c.weight  # integer division on both databases, as ``pick`` charges
    partition = (tasks.c.account_id, tasks.c.profile) if by_profile else (tasks.c.account_id,)
    earlier = func.sum(step).over(partition_by=partition, order_by=(tasks.c.created_at, tasks.c.id), rows=(None, -1))
    return (q.c.vtime + func.coalesce(earlier, 0)).label("start")


def positions(conn: Connection, task_ids: Sequence[str]) -> dict[str, int]:
    """How many pending tasks of the same profile the fair order claims before each pending task of
    ``task_ids`` (0 = next), in one query; tasks that are not pending are absent."""
    if not task_ids:
        return {}
    wanted = select(tasks.c.profile).where(tasks.c.id.in_(list(task_ids)), tasks.c.status == _PENDING).distinct()
    q = account_queue
    pend = (
        select(tasks.c.id, tasks.c.profile, tasks.c.created_at, q.c.tier, q.c.account_id, _starts(by_profile=True))
        .select_from(tasks.join(q, q.c.account_id == tasks.c.account_id))
        .where(tasks.c.status == _PENDING, tasks.c.profile.in_(wanted))
        .subquery("pend")
    )
    rank = (
        func.row_number().over(
            partition_by=pend.c.profile,
            order_by=(pend.c.tier, pend.c.start, pend.c.account_id, pend.c.created_at, pend.c.id),
        )
        - 1
    ).label("position")
    ranked = select(pend.c.id, rank).subquery("ranked")
    rows = conn.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(list(task_ids)))).all()
    return {row[0]: int(row[1]) for row in rows}


def position_for_new(conn: Connection, account_id: str, profile: str, cost_us: int) -> int:
    """How many pending tasks of ``profile`` would be claimed before a task of ``cost_us`` that
    ``account_id`` submitted now (its estimate: nothing is written)."""
    row = conn.execute(select(account_queue).where(account_queue.c.account_id == account_id)).one_or_none()
    weight, tier, vtime = (1, TIERS.index(DEFAULT_TIER), 0) if row is None else (row.weight, row.tier, row.vtime)
    mine = select(func.coalesce(func.sum(tasks.c.cost_us // weight), 0)).where(
        tasks.c.account_id == account_id, tasks.c.status == _PENDING, tasks.c.profile == profile
    )
    queued = int(conn.execute(mine).scalar_one())
    if not queued:  # it would join at the clock
        clock = int(conn.execute(select(func.coalesce(func.max(account_queue.c.last_start), 0))).scalar_one())
        vtime = max(int(vtime), clock)
    my_start = int(vtime) + queued
    q = account_queue
    pend = (
        select(q.c.tier, q.c.account_id, _starts(by_profile=False))
        .select_from(tasks.join(q, q.c.account_id == tasks.c.account_id))
        .where(tasks.c.status == _PENDING, tasks.c.profile == profile)
        .subquery("pend")
    )
    ahead = select(func.count()).where(
        (pend.c.tier < tier)
        | and_(pend.c.tier == tier, pend.c.start < my_start)
        | and_(pend.c.tier == tier, pend.c.start == my_start, pend.c.account_id <= account_id)
    )
    return int(conn.execute(ahead).scalar_one())


def get_schedule(conn: Connection, account_id: str) -> Schedule:
    """The account's weight, tier and virtual time (the defaults before its first task)."""
    row = conn.execute(select(account_queue).where(account_queue.c.account_id == account_id)).one_or_none()
    if row is None:
        return Schedule(weight=1, tier=DEFAULT_TIER, vtime=0)
    return Schedule(weight=int(row.weight), tier=TIERS[int(row.tier)], vtime=int(row.vtime))


def set_schedule(conn: Connection, account_id: str, *, weight: int | None, tier: str | None) -> None:
    """Operator: set the account's weight (1-1000) and/or tier (None leaves one as it is)."""
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).one_or_none() is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"Account {account_id} not found.")
    if weight is not None and not 1 <= weight <= MAX_WEIGHT:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"The weight is a whole number from 1 to {MAX_WEIGHT}.")
    if tier is not None and tier not in TIERS:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"The tier is one of {', '.join(TIERS)}.")
    values: dict[str, int] = {}
    if weight is not None:
        values["weight"] = weight
    if tier is not None:
        values["tier"] = TIERS.index(tier)
    _insert_missing(conn, account_id)
    if values:
        conn.execute(update(account_queue).where(account_queue.c.account_id == account_id).values(**values))
