"""The webhook outbox: enqueue in the transaction that ends a task; claim, record, disable.

``enqueue`` is called by ``store.tasks`` inside every transaction that moves a task to a terminal
status (complete, fail, cancel, rescue, hold expiry), so a webhook is owed exactly when the end is
committed. The row's ``id`` is the ``webhook-id`` of every attempt and its ``payload`` the exact
body, so retries are byte-identical. Deliverers ``claim`` due rows by pushing ``next_attempt_at``
forward with a conditional write (a lease: a deliverer that dies mid-attempt is retried later),
then ``record`` the outcome of the attempt they made.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update

from reelgen.store.tables import webhook_deliveries, webhook_endpoints

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["Delivery", "claim_due", "endpoint_disabled", "enqueue", "get", "list_for_task", "record"]


@dataclass(frozen=True)
class Delivery:
    id: str
    task_id: str
    account_id: str
    url: str
    event: str
    payload: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


def _delivery(m: Any) -> Delivery:
    return Delivery(
        id=m["id"],
        task_id=m["task_id"],
        account_id=m["account_id"],
        url=m["url"],
        event=m["event"],
        payload=m["payload"],
        status=m["status"],
        attempts=int(m["attempts"]),
        next_attempt_at=m["next_attempt_at"],
        last_error=m["last_error"],
    )


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def enqueue(
    conn: Connection,
    *,
    task_id: str,
    account_id: str,
    url: str,
    event: str,
    data: dict[str, Any],
    now: datetime,
    body: dict[str, Any] | None = None,
) -> str:
    """Owe one webhook for a task's end; returns its ``webhook-id`` (``msg_`` + 32 hex digits).
    ``body`` replaces the default ``{type, timestamp, data}`` (the ``/v1/videos`` door's events)."""
    msg_id = "msg_" + uuid.uuid4().hex
    if body is None:
        body = {"type": event, "timestamp": data.get("completedAt"), "data": data}
    conn.execute(
        insert(webhook_deliveries).values(
            id=msg_id,
            task_id=task_id,
            account_id=account_id,
            url=url,
            event=event,
            payload=json.dumps(body, separators=(",", ":"), sort_keys=True),
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return msg_id


def get(conn: Connection, msg_id: str) -> Delivery | None:
    row = conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == msg_id)).one_or_none()
    return None if row is None else _delivery(row._mapping)


def list_for_task(conn: Connection, task_id: str) -> list[Delivery]:
    rows = conn.execute(
        select(webhook_deliveries).where(webhook_deliveries.c.task_id == task_id).order_by(webhook_deliveries.c.id)
    )
    return [_delivery(r._mapping) for r in rows]


def claim_due(conn: Connection, now: datetime, *, lease_seconds: float, limit: int = 10) -> list[Delivery]:
    """Pending deliveries due by ``now``, each leased to the caller for ``lease_seconds``."""
    stmt = (
        select(webhook_deliveries)
        .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt_at <= now)
        .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    claimed: list[Delivery] = []
    for row in conn.execute(stmt).all():
        d = _delivery(row._mapping)
        won = conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == d.id,
                webhook_deliveries.c.status == "pending",
                webhook_deliveries.c.attempts == d.attempts,
                webhook_deliveries.c.next_attempt_at == d.next_attempt_at,
            )
            .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
        ).rowcount
        if won == 1:
            claimed.append(d)
    return claimed


def endpoint_disabled(conn: Connection, account_id: str, url: str, now: datetime) -> bool:
    until = conn.execute(
        select(webhook_endpoints.c.disabled_until).where(
            webhook_endpoints.c.account_id == account_id, webhook_endpoints.c.url_hash == url_hash(url)
        )
    ).scalar_one_or_none()
    return until is not None and until > now


def _endpoint(conn: Connection, account_id: str, url: str) -> tuple[int, datetime | None] | None:
    row = conn.execute(
        select(webhook_endpoints.c.failed_deliveries, webhook_endpoints.c.disabled_until).where(
            webhook_endpoints.c.account_id == account_id, webhook_endpoints.c.url_hash == url_hash(url)
        )
    ).one_or_none()
    return None if row is None else (int(row.failed_deliveries), row.disabled_until)


def _set_endpoint(conn: Connection, account_id: str, url: str, failed: int, disabled_until: datetime | None) -> None:
    values = {"failed_deliveries": failed, "disabled_until": disabled_until}
    where = (webhook_endpoints.c.account_id == account_id, webhook_endpoints.c.url_hash == url_hash(url))
    if conn.execute(update(webhook_endpoints).where(*where).values(**values)).rowcount == 0:
        conn.execute(insert(webhook_endpoints).values(account_id=account_id, url_hash=url_hash(url), **values))


def record(
    conn: Connection,
    delivery: Delivery,
    *,
    ok: bool,
    error: str | None,
    now: datetime,
    retry_at: datetime | None,
    disable_after: int,
    disable_for: timedelta,
) -> str:
    """Record one attempt of a claimed delivery; returns its new status.

    ``ok``: delivered. Otherwise retried at ``retry_at``, or (``retry_at`` None: attempts used up)
    failed for good, which counts a failed delivery against the endpoint; ``disable_after``
    consecutive failed deliveries disable it for ``disable_for`` (its pending deliveries then fail
    without being sent). A delivery resets the count.
    """
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "last_error": None if ok else (error or "failed")[:200]}
    if ok:
        status = "delivered"
        values.update(status=status, finished_at=now)
        _set_endpoint(conn, delivery.account_id, delivery.url, 0, None)
    elif retry_at is not None:
        status = "pending"
        values.update(next_attempt_at=retry_at)
    else:
        status = "failed"
        values.update(status=status, finished_at=now)
        failed = (_endpoint(conn, delivery.account_id, delivery.url) or (0, None))[0] + 1
        disabled = now + disable_for if failed >= disable_after else None
        _set_endpoint(conn, delivery.account_id, delivery.url, 0 if disabled else failed, disabled)
    conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.id == delivery.id, webhook_deliveries.c.attempts == delivery.attempts)
        .values(**values)
    )
    return status
