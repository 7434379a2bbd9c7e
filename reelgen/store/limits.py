"""Per-account limits: the operator's overrides and the global cap on active tasks.

``check_active`` runs inside the submit transaction, before the hold: it locks the account row
(PostgreSQL ``FOR NO KEY UPDATE``, as the ledger does; SQLite's immediate transaction already
serialises writers), counts the account's pending and processing tasks and refuses the submit at
the cap, so the cap holds across any number of API processes and a refused submit holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import tasks
from reelgen.store.tables import account_limits, accounts

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["ACTIVE_RETRY_AFTER_SECONDS", "Limits", "check_active", "get", "set_limits"]

#: ``Retry-After`` when the active-task cap refuses a submit (a task has to end first).
ACTIVE_RETRY_AFTER_SECONDS = 10


@dataclass(frozen=True)
class Limits:
    """Effective limits of an account; 0 = unlimited."""

    requests_per_minute: int
    max_active_tasks: int


def get(conn: Connection, account_id: str, *, default_rpm: int, default_active: int) -> Limits:
    row = conn.execute(select(account_limits).where(account_limits.c.account_id == account_id)).one_or_none()
    rpm = row.requests_per_minute if row is not None and row.requests_per_minute is not None else default_rpm
    active = row.max_active_tasks if row is not None and row.max_active_tasks is not None else default_active
    return Limits(requests_per_minute=int(rpm), max_active_tasks=int(active))


def set_limits(conn: Connection, account_id: str, *, rpm: int | None, max_active: int | None) -> None:
    """Override the account's limits (None leaves one as it is; ``ACCOUNT_NOT_FOUND`` if unknown)."""
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).one_or_none() is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"Account {account_id} not found.")
    for value in (rpm, max_active):
        if value is not None and value < 0:
            raise ReelgenError(ErrorCode.INVALID_INPUT, "Limits are whole numbers >= 0 (0 = unlimited).")
    values = {k: v for k, v in (("requests_per_minute", rpm), ("max_active_tasks", max_active)) if v is not None}
    if not values:
        return
    where = account_limits.c.account_id == account_id
    if conn.execute(update(account_limits).where(where).values(**values)).rowcount == 0:
        conn.execute(insert(account_limits).values(account_id=account_id, **values))


def check_active(conn: Connection, account_id: str, max_active: int) -> None:
    """``RATE_LIMITED`` if the account already has ``max_active`` pending+processing tasks (0 = no cap)."""
    if max_active <= 0:
        return
    conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update(key_share=True))
    active = tasks.count_active(conn, account_id)
    if active >= max_active:
        raise ReelgenError(
            ErrorCode.RATE_LIMITED,
            f"Too many active tasks: {active} pending or processing, the limit is {max_active}. "
            "Retry when one has finished.",
            headers={"Retry-After": str(ACTIVE_RETRY_AFTER_SECONDS)},
        )
