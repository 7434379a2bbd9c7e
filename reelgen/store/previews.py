"""Each task's latest live preview (table ``task_previews``, migration 0011).

Only the attempt that owns the task writes: ``record`` first takes the task's row with a conditional
write on (id, attempt, ``processing``), so a worker that lost its claim, or a task cancelled or
finished meanwhile, records nothing (on PostgreSQL the row lock orders it against a cancel). Every
API replica reads the same row; ``seq`` moves with each new preview. The objects themselves live in
storage under the key recorded here; ``purgeable`` lists the previews nobody may see any more (the
task failed or was cancelled, or its result was deleted), which the sweeper removes with their objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from reelgen.domain import TaskStatus
from reelgen.store.tables import task_previews, tasks, videos

__all__ = ["PreviewInfo", "PreviewRow", "get", "purgeable", "record", "remove"]


@dataclass(frozen=True)
class PreviewInfo:
    """A stored preview: its object, size, frame count and the job step it shows."""

    key: str
    width: int
    height: int
    frames: int
    step: int
    total_steps: int


@dataclass(frozen=True)
class PreviewRow:
    task_id: str
    attempt: int
    info: PreviewInfo
    seq: int
    updated_at: datetime


def record(conn: Connection, task_id: str, attempt: int, info: PreviewInfo, now: datetime) -> tuple[bool, str | None]:
    """Record attempt ``attempt``'s latest preview, if it still owns the task.

    Returns (recorded, the other key): when recorded, the key the row pointed at before (None for
    the first preview); when refused, the key the row points at now (None if none)."""
    owner = (
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.attempt == attempt, tasks.c.status == TaskStatus.PROCESSING.value)
        .values(progress=tasks.c.progress)  # takes the row: a cancel or a finish waits, or went first
    )
    current = get(conn, task_id)
    if conn.execute(owner).rowcount != 1:
        return False, current.info.key if current else None
    values = {
        "attempt": attempt,
        "key": info.key,
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "step": info.step,
        "total_steps": info.total_steps,
        "updated_at": now,
    }
    if current is None:
        conn.execute(insert(task_previews).values(task_id=task_id, seq=1, **values))
        return True, None
    conn.execute(
        update(task_previews).where(task_previews.c.task_id == task_id).values(seq=task_previews.c.seq + 1, **values)
    )
    return True, current.info.key


def get(conn: Connection, task_id: str) -> PreviewRow | None:
    m = conn.execute(select(task_previews).where(task_previews.c.task_id == task_id)).mappings().first()
    if m is None:
        return None
    info = PreviewInfo(m["key"], m["width"], m["height"], m["frames"], m["step"], m["total_steps"])
    return PreviewRow(m["task_id"], m["attempt"], info, m["seq"], m["updated_at"])


def purgeable(conn: Connection, limit: int = 500) -> list[tuple[str, str]]:
    """(task id, key) of previews nobody may see any more: the task failed or was cancelled, or its
    result was deleted (``DELETE /v1/videos/{id}``)."""
    ended = tasks.c.status.in_([TaskStatus.FAILED.value, TaskStatus.CANCELLED.value])
    deleted = and_(tasks.c.status == TaskStatus.COMPLETED.value, videos.c.deleted_at.is_not(None))
    stmt = (
        select(task_previews.c.task_id, task_previews.c.key)
        .join(tasks, tasks.c.id == task_previews.c.task_id)
        .outerjoin(videos, videos.c.task_id == task_previews.c.task_id)
        .where(or_(ended, deleted))
        .limit(limit)
    )
    return [(r.task_id, r.key) for r in conn.execute(stmt)]


def remove(conn: Connection, task_id: str, key: str) -> bool:
    """Forget the task's preview if it is still ``key`` (a conditional delete); True if it was."""
    stmt = delete(task_previews).where(task_previews.c.task_id == task_id, task_previews.c.key == key)
    return conn.execute(stmt).rowcount == 1
