"""The credit ledger: grant, reserve, capture and release as append-only double entries.

Each movement writes one ``movements`` row and two ``ledger_entries`` rows that sum to zero::

    grant    system.granted  -a   account.available +a
    reserve  account.available -p   account.reserved +p
    capture  account.reserved  -p   system.captured  +p
    release  account.reserved  -p   account.available +p

and updates the account's cached balance columns in the same transaction (invariant I1). A task
has one reserve and at most one of capture/release: ``UNIQUE(task_id, kind)`` makes a retried
finish a no-op, and the check under the account lock refuses the other resolution.

Every function takes the caller's connection and runs inside its transaction; on SQLite call them
in an immediate transaction (``db.run(fn, immediate=True)``), on PostgreSQL the account row is
locked with ``SELECT ... FOR NO KEY UPDATE`` before any balance is read.

Amounts are bounded: no grant, price or balance exceeds ``schemas.MAX_CREDITS``, so every column
and sum stays an exact integer on both databases; ``check`` reads any data without failing.

Over 400 lines because the movements and their audit (``check``, invariants I1-I5) share one
table of entries (``_ENTRIES``): splitting them would let the two drift apart.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, insert, literal, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import MAX_CREDITS
from reelgen.store.tables import BUCKETS, accounts, ledger_entries, movements, tasks

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Select
    from sqlalchemy.engine import Connection, RowMapping

__all__ = ["Balance", "balance", "balance_from_entries", "capture", "check", "grant", "release", "reserve"]


@dataclass(frozen=True)
class Balance:
    """An account's credits: ``available`` = ``granted`` - ``captured`` - ``reserved``."""

    available: int
    reserved: int
    captured: int
    granted: int


# kind -> its two entries: (bucket, on the account (True) or the system side (False), sign)
_ENTRIES: dict[str, tuple[tuple[str, bool, int], tuple[str, bool, int]]] = {
    "grant": (("granted", False, -1), ("available", True, +1)),
    "reserve": (("available", True, -1), ("reserved", True, +1)),
    "capture": (("reserved", True, -1), ("captured", False, +1)),
    "release": (("reserved", True, -1), ("available", True, +1)),
}
# kind -> change of each cached account column per credit moved
_CACHE_DELTAS: dict[str, dict[str, int]] = {
    "grant": {"available": +1, "granted": +1},
    "reserve": {"available": -1, "reserved": +1},
    "capture": {"reserved": -1, "captured": +1},
    "release": {"reserved": -1, "available": +1},
}


def _positive_amount(amount: int) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT, f"amount must be a positive whole number of credits (got {amount!r})"
        )
    if amount > MAX_CREDITS:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"amount must be at most {MAX_CREDITS} credits (got {amount})")
    return amount


def _lock_account(conn: Connection, account_id: str) -> tuple[int, int, int] | None:
    """(available, reserved, granted) of the account, locked until the transaction ends; None if unknown."""
    row = conn.execute(
        select(accounts.c.available, accounts.c.reserved, accounts.c.granted)
        .where(accounts.c.id == account_id)
        # PostgreSQL: FOR NO KEY UPDATE, not FOR UPDATE. Inserting a task or movement takes a KEY
        # SHARE lock on this row (the foreign key); FOR UPDATE conflicts with it, so two submits
        # would deadlock, while NO KEY UPDATE only waits for the other money mover. SQLite ignores
        # the clause: there the immediate transaction already serialises writers.
        .with_for_update(key_share=True)
    ).one_or_none()
    return None if row is None else (int(row.available), int(row.reserved), int(row.granted))


def _post(conn: Connection, kind: str, account_id: str, task_id: str | None, amount: int, now: datetime) -> None:
    """Write one movement, its two entries and the cached balance change."""
    movement_id = conn.execute(
        insert(movements)
        .values(kind=kind, account_id=account_id, task_id=task_id, amount=amount, created_at=now)
        .returning(movements.c.id)
    ).scalar_one()
    conn.execute(
        insert(ledger_entries),
        [
            {
                "movement_id": movement_id,
                "account_id": account_id if on_account else None,
                "bucket": bucket,
                "amount": sign * amount,
            }
            for bucket, on_account, sign in _ENTRIES[kind]
        ],
    )
    deltas = _CACHE_DELTAS[kind]
    stmt = (
        update(accounts)
        .where(accounts.c.id == account_id)
        .values({accounts.c[col]: accounts.c[col] + sign * amount for col, sign in deltas.items()})
    )
    if deltas.get("available", 0) < 0:
        stmt = stmt.where(accounts.c.available >= amount)
    if deltas.get("reserved", 0) < 0:
        stmt = stmt.where(accounts.c.reserved >= amount)
    if conn.execute(stmt).rowcount != 1:
        # callers check first under the row lock, so this is a bug, not a user error
        raise RuntimeError(f"{kind} of {amount} on account {account_id} would overdraw a balance")


def grant(conn: Connection, account_id: str, amount: int, now: datetime) -> None:
    """Add ``amount`` credits to the account's available balance."""
    _positive_amount(amount)
    locked = _lock_account(conn, account_id)
    if locked is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    available, _, granted = locked
    # every balance is bounded: a grant may not carry the balance, nor the account's lifetime
    # grants (which bound what it can ever spend), past MAX_CREDITS
    if available + amount > MAX_CREDITS or granted + amount > MAX_CREDITS:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"granting {amount} credits would take account {account_id} past the limit of {MAX_CREDITS} "
            f"credits (available {available}, granted so far {granted})",
        )
    _post(conn, "grant", account_id, None, amount, now)


def reserve(conn: Connection, account_id: str, task_id: str, amount: int, now: datetime) -> int:
    """Hold ``amount`` credits for ``task_id``; returns the available balance after the hold.

    Raises ``INSUFFICIENT_CREDITS`` (nothing written) when the account has less available.
    """
    _positive_amount(amount)
    locked = _lock_account(conn, account_id)
    if locked is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    available = locked[0]
    if available < amount:
        raise ReelgenError(
            ErrorCode.INSUFFICIENT_CREDITS,
            f"Insufficient credits. Required: {amount}, Available: {available}",
        )
    held = conn.execute(
        select(movements.c.id).where(movements.c.task_id == task_id, movements.c.kind == "reserve")
    ).first()
    if held is not None:
        raise ValueError(f"task {task_id} already holds credits")
    _post(conn, "reserve", account_id, task_id, amount, now)
    return available - amount


def _resolve(conn: Connection, task_id: str, kind: str, now: datetime) -> bool:
    hold = conn.execute(
        select(movements.c.account_id, movements.c.amount).where(
            movements.c.task_id == task_id, movements.c.kind == "reserve"
        )
    ).one_or_none()
    if hold is None:
        raise ValueError(f"task {task_id} holds no credits")
    # lock first, then look: a concurrent capture/release of this hold commits before we read
    _lock_account(conn, hold.account_id)
    resolved = conn.execute(
        select(func.count())
        .select_from(movements)
        .where(movements.c.task_id == task_id, movements.c.kind.in_(("capture", "release")))
    ).scalar_one()
    if resolved:
        return False
    _post(conn, kind, hold.account_id, task_id, int(hold.amount), now)
    return True


def capture(conn: Connection, task_id: str, now: datetime) -> bool:
    """Spend the task's hold (it succeeded). False if the hold was already captured or released."""
    return _resolve(conn, task_id, "capture", now)


def release(conn: Connection, task_id: str, now: datetime) -> bool:
    """Return the task's hold to available. False if the hold was already captured or released."""
    return _resolve(conn, task_id, "release", now)


def balance(conn: Connection, account_id: str) -> Balance:
    """The account's cached balances (``ACCOUNT_NOT_FOUND`` if unknown)."""
    row = conn.execute(
        select(accounts.c.available, accounts.c.reserved, accounts.c.captured, accounts.c.granted).where(
            accounts.c.id == account_id
        )
    ).one_or_none()
    if row is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    return Balance(int(row.available), int(row.reserved), int(row.captured), int(row.granted))


class _ledger_sum(FunctionElement[Any]):
    """SUM that cannot fail: SQLite's ``sum`` raises "integer overflow" past 2**63 (a corrupt or
    pre-limit ledger), so there it is ``total`` (a float, exact for every bounded balance);
    PostgreSQL's ``sum`` of a BIGINT is an exact NUMERIC already."""

    inherit_cache = True
    name = "ledger_sum"


@compiles(_ledger_sum)
def _sum_sql(element: _ledger_sum, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(_ledger_sum, "sqlite")
def _total_sql(element: _ledger_sum, compiler: Any, **kw: Any) -> str:
    return f"total({compiler.process(element.clauses, **kw)})"


def _whole(value: Any) -> int | None:
    """``value`` as a whole number of credits, or None when it is not one (a float with a fraction,
    text, NULL: what a damaged SQLite file may hold, whatever the column's declared type)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


@functools.cache
def _sums_query() -> Select[Any]:
    owner = func.coalesce(ledger_entries.c.account_id, movements.c.account_id)
    return (
        select(owner.label("owner"), ledger_entries.c.bucket, _ledger_sum(ledger_entries.c.amount))
        .select_from(ledger_entries.join(movements, movements.c.id == ledger_entries.c.movement_id))
        .group_by(owner, ledger_entries.c.bucket)
    )


def _entry_sums(conn: Connection, account_id: str | None = None) -> dict[str, dict[str, int]]:
    """account id -> bucket -> sum of entries, the system side attributed through the movement."""
    stmt = _sums_query()
    if account_id is not None:
        stmt = stmt.where(
            or_(
                ledger_entries.c.account_id == account_id,
                and_(ledger_entries.c.account_id.is_(None), movements.c.account_id == account_id),
            )
        )
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for owner_id, bucket, total in conn.execute(stmt):
        # a float total of a damaged ledger is rounded; _check_values names the damaged rows
        whole = _whole(total)
        sums[owner_id][bucket] = whole if whole is not None else round(float(total))
    return sums


def _from_sums(sums: dict[str, int]) -> Balance:
    return Balance(
        available=sums.get("available", 0),
        reserved=sums.get("reserved", 0),
        captured=sums.get("captured", 0),
        granted=-sums.get("granted", 0),
    )


def balance_from_entries(conn: Connection, account_id: str) -> Balance:
    """The account's balances recomputed from its ledger entries (what ``balance`` must equal)."""
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    return _from_sums(_entry_sums(conn, account_id).get(account_id, {}))


def check(conn: Connection) -> list[str]:
    """Every violation of the ledger invariants I1-I5, in words; an empty list means healthy.

    Reads any data without failing: values that are not whole numbers of credits, or are beyond
    ``MAX_CREDITS`` (I5), are reported, and the sums behind I1-I4 cannot overflow."""
    return [*_check_values(conn), *_check_balances(conn), *_check_movements(conn), *_check_holds(conn)]


def _out_of_range(col: ColumnElement[Any], low: int) -> ColumnElement[bool]:
    """SQL: ``col`` is NULL, below ``low``, above ``MAX_CREDITS`` or not whole (SQLite's columns
    hold whatever was stored; text compares above every number there)."""
    return or_(col.is_(None), col < low, col > MAX_CREDITS, col != func.round(col))


def _check_values(conn: Connection) -> list[str]:
    """I5: every amount and balance is a whole number of credits within the limits."""
    problems: list[str] = []
    checks: list[tuple[str, Any, ColumnElement[Any], int]] = [
        *((f"account {{}}: cached {name}", accounts.c.id, accounts.c[name], 0) for name in BUCKETS),
        ("movement {}: amount", movements.c.id, movements.c.amount, 1),
        ("ledger entry {}: amount", ledger_entries.c.id, func.abs(ledger_entries.c.amount), 1),
        ("task {}: price", tasks.c.id, tasks.c.price, 1),
    ]
    for what, key, col, low in checks:
        stmt = select(key, col).where(_out_of_range(col, low)).order_by(key).limit(100)
        for row_id, value in conn.execute(stmt):
            problems.append(f"I5 {what.format(row_id)} is {value!r}, not a whole number of credits {low}-{MAX_CREDITS}")
    return problems


def _check_balances(conn: Connection) -> list[str]:
    """I1 (cached columns equal the entry sums) and I3 (nothing negative)."""
    problems: list[str] = []
    sums = _entry_sums(conn)
    known: set[str] = set()
    for row in conn.execute(select(accounts).order_by(accounts.c.id)):
        known.add(row.id)
        values = [_whole(row._mapping[name]) for name in ("available", "reserved", "captured", "granted")]
        if any(v is None for v in values):
            continue  # reported by I5
        cached = Balance(*(int(v) for v in values if v is not None))
        derived = _from_sums(sums.get(row.id, {}))
        for name in ("available", "reserved", "captured", "granted"):
            have, want = getattr(cached, name), getattr(derived, name)
            if have != want:
                problems.append(f"I1 account {row.id}: cached {name} {have} != {want} from its ledger entries")
        for name in ("available", "reserved"):
            for source, value in (("cached", getattr(cached, name)), ("entries", getattr(derived, name))):
                if value < 0:
                    problems.append(f"I3 account {row.id}: {name} is negative ({source}: {value})")
    for owner in sorted(set(sums) - known):
        problems.append(f"I1 ledger entries name account {owner}, which does not exist")
    return problems


def _entry_fits(kind: str) -> ColumnElement[bool]:
    """SQL: the entry is one of the two that a movement of ``kind`` must have."""
    return or_(
        *(
            and_(
                movements.c.kind == kind,
                ledger_entries.c.bucket == bucket,
                (ledger_entries.c.account_id == movements.c.account_id)
                if on_account
                else ledger_entries.c.account_id.is_(None),
                ledger_entries.c.amount == sign * movements.c.amount,
            )
            for bucket, on_account, sign in _ENTRIES[kind]
        )
    )


@functools.cache
def _movement_problems_query() -> Select[Any]:
    """Movements whose entries are not exactly the two their kind prescribes."""
    fits = or_(*(_entry_fits(kind) for kind in _ENTRIES))
    n = func.count(ledger_entries.c.id)
    total = func.coalesce(_ledger_sum(ledger_entries.c.amount), 0)
    misfits = func.coalesce(func.sum(case((fits, 0), else_=1)), 0)
    return (
        select(movements.c.id, movements.c.kind, n.label("n"), total.label("total"), misfits.label("misfits"))
        .select_from(movements.outerjoin(ledger_entries, ledger_entries.c.movement_id == movements.c.id))
        .group_by(movements.c.id, movements.c.kind)
        .having(or_(n != 2, total != 0, misfits != literal(0)))
        .order_by(movements.c.id)
    )


def _check_movements(conn: Connection) -> list[str]:
    """I2: each movement has exactly its two entries and they sum to zero."""
    stmt = _movement_problems_query()
    problems = []
    for row in conn.execute(stmt):
        what = []
        if row.n != 2:
            what.append(f"{row.n} entries instead of 2")
        if row.total != 0:
            what.append(f"entries sum to {row.total}, not 0")
        if row.misfits:
            what.append(f"{row.misfits} entries do not match a {row.kind}")
        problems.append(f"I2 movement {row.id} ({row.kind}): {'; '.join(what)}")
    return problems


def _count(kind: str) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((movements.c.kind == kind, 1), else_=0)), 0)


@functools.cache
def _hold_problems_query() -> Select[Any]:
    """Tasks whose movements do not match their state: the SQL form of I4."""
    held = func.coalesce(_ledger_sum(case((movements.c.kind == "reserve", movements.c.amount), else_=0)), 0)
    per_task = (
        select(
            movements.c.task_id,
            _count("reserve").label("reserves"),
            _count("capture").label("captures"),
            _count("release").label("releases"),
            held.label("held"),
            func.min(movements.c.amount).label("lo"),
            func.max(movements.c.amount).label("hi"),
            func.min(movements.c.account_id).label("acc_lo"),
            func.max(movements.c.account_id).label("acc_hi"),
        )
        .where(movements.c.task_id.is_not(None))
        .group_by(movements.c.task_id)
        .subquery()
    )
    p = per_task.c
    return (
        select(tasks.c.id, tasks.c.status, tasks.c.price, tasks.c.account_id, *(c for c in p if c.name != "task_id"))
        .select_from(tasks.outerjoin(per_task, p.task_id == tasks.c.id))
        .where(
            or_(
                func.coalesce(p.reserves, 0) != 1,
                p.held != tasks.c.price,
                p.lo != p.hi,
                p.acc_lo != tasks.c.account_id,
                p.acc_hi != tasks.c.account_id,
                and_(tasks.c.status == "completed", or_(p.captures != 1, p.releases != 0)),
                and_(tasks.c.status.in_(("failed", "cancelled")), or_(p.releases != 1, p.captures != 0)),
                and_(tasks.c.status.in_(("pending", "processing")), or_(p.captures != 0, p.releases != 0)),
            )
        )
        .order_by(tasks.c.id)
    )


@functools.cache
def _orphans_query() -> Select[Any]:
    return (
        select(movements.c.id, movements.c.task_id)
        .select_from(movements.outerjoin(tasks, tasks.c.id == movements.c.task_id))
        .where(movements.c.task_id.is_not(None), tasks.c.id.is_(None))
        .order_by(movements.c.id)
    )


def _check_holds(conn: Connection) -> list[str]:
    """I4: one reserve per task, resolved once and the right way for its state."""
    rows = conn.execute(_hold_problems_query()).all()
    problems = [_describe_hold(row._mapping) for row in rows]
    orphans = conn.execute(_orphans_query()).all()
    problems += [f"I4 movement {m.id} names task {m.task_id}, which does not exist" for m in orphans]
    return problems


def _describe_hold(r: RowMapping) -> str:
    reserves, captures, releases = (r[n] or 0 for n in ("reserves", "captures", "releases"))
    head = f"I4 task {r['id']} ({r['status']})"
    if reserves != 1:
        return f"{head}: {reserves} reserves instead of 1"
    if r["held"] != r["price"]:
        return f"{head}: holds {r['held']} credits but is priced {r['price']}"
    if r["lo"] != r["hi"]:
        return f"{head}: its movements move different amounts ({r['lo']} and {r['hi']})"
    if r["acc_lo"] != r["account_id"] or r["acc_hi"] != r["account_id"]:
        return f"{head}: its movements are on another account than the task's"
    if captures and releases:
        return f"{head}: captured {captures} and released {releases} times"
    return f"{head}: {captures} captures and {releases} releases"
