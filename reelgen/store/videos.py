"""The ``/v1/videos`` door's rows (table ``videos``, migration 0008): what a video was created with
through that door (OpenAI model id, size, the video it remixes) and when its result was deleted.

A task submitted through ``/api/v1`` or MCP has no row until it is deleted through ``/v1/videos``;
its video object is derived from the task alone. Money never moves here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, insert, or_, select, update

from reelgen.store import tasks as task_store
from reelgen.store.tables import tasks, videos

__all__ = ["Video", "delete_result", "get", "get_many", "page", "record"]


@dataclass(frozen=True)
class Video:
    task_id: str
    model: str | None
    size: str | None
    remixed_from: str | None
    deleted_at: datetime | None


def _video(m: object) -> Video:
    row = dict(m)  # type: ignore[call-overload]
    return Video(row["task_id"], row["model"], row["size"], row["remixed_from"], row["deleted_at"])


def record(conn: Connection, task_id: str, *, model: str, size: str, remixed_from: str | None) -> None:
    """Remember what a video created through ``/v1/videos`` asked for (same transaction as the task)."""
    conn.execute(insert(videos).values(task_id=task_id, model=model, size=size, remixed_from=remixed_from))


def get(conn: Connection, task_id: str) -> Video | None:
    row = conn.execute(select(videos).where(videos.c.task_id == task_id)).one_or_none()
    return None if row is None else _video(row._mapping)


def get_many(conn: Connection, task_ids: list[str]) -> dict[str, Video]:
    if not task_ids:
        return {}
    rows = conn.execute(select(videos).where(videos.c.task_id.in_(task_ids)))
    return {r.task_id: _video(r._mapping) for r in rows}


def page(
    conn: Connection,
    account_id: str,
    *,
    limit: int,
    after: tuple[datetime, str] | None = None,
    ascending: bool = False,
) -> list[task_store.TaskRow]:
    """The account's tasks whose result was not deleted, by creation time (newest first unless
    ``ascending``), starting after the (created_at, id) of ``after``."""
    stmt = (
        select(tasks)
        .outerjoin(videos, videos.c.task_id == tasks.c.id)
        .where(tasks.c.account_id == account_id, videos.c.deleted_at.is_(None))
        .limit(max(0, limit))
    )
    if ascending:
        stmt = stmt.order_by(tasks.c.created_at.asc(), tasks.c.id.asc())
    else:
        stmt = stmt.order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
    if after is not None:
        created_at, last_id = after
        if ascending:
            stmt = stmt.where(
                or_(tasks.c.created_at > created_at, and_(tasks.c.created_at == created_at, tasks.c.id > last_id))
            )
        else:
            stmt = stmt.where(
                or_(tasks.c.created_at < created_at, and_(tasks.c.created_at == created_at, tasks.c.id < last_id))
            )
    return [task_store._row(r._mapping) for r in conn.execute(stmt)]


def delete_result(conn: Connection, task_id: str, now: datetime) -> str | None:
    """Mark the video deleted and forget its stored result; returns the result's storage key (the
    caller deletes the object after the commit). The task row and its ledger entries stay."""
    row = conn.execute(select(tasks.c.result_key).where(tasks.c.id == task_id).with_for_update()).one()
    done = conn.execute(update(videos).where(videos.c.task_id == task_id).values(deleted_at=now))
    if done.rowcount == 0:
        conn.execute(insert(videos).values(task_id=task_id, deleted_at=now))
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(result_key=None))
    key: str | None = row.result_key
    return key
