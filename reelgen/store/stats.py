"""Read-only aggregates for ``/metrics``: queue depth, tasks by status, run times, credits, leases."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, literal, select

from reelgen.store.tables import accounts, tasks

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement
    from sqlalchemy.engine import Connection

__all__ = ["Stats", "collect"]


@dataclass(frozen=True)
class Stats:
    pending_by_model: dict[str, int]
    tasks_by_status: dict[str, int]
    #: (upper bound, completed tasks whose run took at most that long) for each bucket, then the sum and count
    run_buckets: list[tuple[float, int]]
    run_seconds_sum: float
    run_count: int
    credits_captured: int
    live_leases: int
    expired_leases: int
    oldest_heartbeat_age: float | None


def _run_seconds(conn: Connection) -> ColumnElement[Any]:
    """SQL: seconds from claim to completion of a task."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", tasks.c.completed_at - tasks.c.started_at)
    return (func.julianday(tasks.c.completed_at) - func.julianday(tasks.c.started_at)) * 86400.0


def collect(conn: Connection, now: datetime, buckets: tuple[float, ...]) -> Stats:
    pending = conn.execute(
        select(tasks.c.model, func.count()).where(tasks.c.status == "pending").group_by(tasks.c.model)
    ).all()
    by_status = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
    seconds = _run_seconds(conn)
    done = (tasks.c.status == "completed", tasks.c.started_at.is_not(None), tasks.c.completed_at.is_not(None))
    counts = [func.coalesce(func.sum(case((seconds <= b, 1), else_=0)), 0) for b in buckets]
    row = conn.execute(select(func.count(), func.coalesce(func.sum(seconds), literal(0.0)), *counts).where(*done)).one()
    captured = conn.execute(select(func.coalesce(func.sum(accounts.c.captured), 0))).scalar_one()
    leases = conn.execute(
        select(
            func.coalesce(func.sum(case((tasks.c.lease_expires_at >= now, 1), else_=0)), 0),
            func.coalesce(func.sum(case((tasks.c.lease_expires_at < now, 1), else_=0)), 0),
            func.min(tasks.c.heartbeat_at),
        ).where(tasks.c.status == "processing")
    ).one()
    oldest = leases[2]
    return Stats(
        pending_by_model={str(m): int(n) for m, n in pending},
        tasks_by_status={str(s): int(n) for s, n in by_status},
        run_buckets=[(b, int(n)) for b, n in zip(buckets, row[2:], strict=True)],
        run_seconds_sum=float(row[1] or 0.0),
        run_count=int(row[0]),
        credits_captured=int(captured),
        live_leases=int(leases[0]),
        expired_leases=int(leases[1]),
        oldest_heartbeat_age=None if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds()),
    )


def _aware(ts: datetime) -> datetime:
    from datetime import UTC

    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
