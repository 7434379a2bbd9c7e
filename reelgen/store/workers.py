"""Workers as the store knows them: one row per live worker process (or Ray engine actor), its
profile, device and state (``loading`` until its engine is loaded and warmed up, then ``ready``).

A worker registers before it loads its engine, says ``ready`` when it starts claiming, refreshes
``seen_at`` while it lives (each claim poll and each attempt heartbeat) and removes its row when it
exits; a row not seen for longer than the lease belongs to a worker that died and is not counted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update

from reelgen.store.tables import WORKER_STATES, workers

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["count", "register", "remove", "seen"]


def register(
    conn: Connection, worker_id: str, *, profile: str, device: str, now: datetime, state: str = "loading"
) -> None:
    """A worker starts (loading, by default); a restarted worker with the same id starts over."""
    if state not in WORKER_STATES:
        raise ValueError(f"unknown worker state {state!r}")
    conn.execute(delete(workers).where(workers.c.id == worker_id))
    conn.execute(
        insert(workers).values(id=worker_id, profile=profile, device=device, state=state, started_at=now, seen_at=now)
    )


def seen(conn: Connection, worker_id: str, *, now: datetime, state: str | None = None) -> bool:
    """The worker is alive (and, with ``state``, now in that state); False if it has no row."""
    values: dict[str, object] = {"seen_at": now}
    if state is not None:
        if state not in WORKER_STATES:
            raise ValueError(f"unknown worker state {state!r}")
        values["state"] = state
    return bool(conn.execute(update(workers).where(workers.c.id == worker_id).values(**values)).rowcount)


def remove(conn: Connection, worker_id: str) -> None:
    conn.execute(delete(workers).where(workers.c.id == worker_id))


def count(conn: Connection, *, profile: str, now: datetime, stale_after: timedelta) -> dict[str, int]:
    """Live workers of ``profile`` by state (every state present, zero when none)."""
    rows = conn.execute(
        select(workers.c.state, func.count())
        .where(workers.c.profile == profile, workers.c.seen_at >= now - stale_after)
        .group_by(workers.c.state)
    ).all()
    counts = dict.fromkeys(WORKER_STATES, 0)
    counts.update({str(state): int(n) for state, n in rows})
    return counts
