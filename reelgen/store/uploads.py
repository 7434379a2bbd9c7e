"""Uploaded input images: who owns them and where their bytes are stored; presigned upload slots
(``upload_slots``) waiting for their bytes; and what the retention purge may delete.

A slot is claimed once (a conditional write on ``claimed_at``) before any byte is stored, so two
``PUT``s of one signed URL never both write; the upload row replaces the slot in one transaction.
An upload is marked used (``used_at``) in the transaction that creates the first task naming it;
the purge deletes only rows still unused, with a conditional delete, so a task never loses its image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, insert, select, update

from reelgen.schemas import UPLOAD_URL_PREFIX
from reelgen.store.tables import accounts, upload_slots, uploads

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Row

__all__ = [
    "SCHEME",
    "Slot",
    "Upload",
    "bytes_of",
    "claim_slot",
    "create",
    "create_slot",
    "finish_slot",
    "get",
    "get_slot",
    "mark_used",
    "parse_url",
    "purge_expired_slot",
    "purge_unused",
    "stale_slots",
    "storage_key",
    "unused_before",
    "url_for",
]

#: ``image_urls`` entries naming an upload: ``reelgen-upload://<32 hex digits>``.
SCHEME = UPLOAD_URL_PREFIX
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Upload:
    id: str
    account_id: str
    key: str
    format: str
    size: int
    width: int
    height: int
    created_at: datetime


@dataclass(frozen=True)
class Slot:
    """A presigned upload: ``size`` bytes of ``content_type`` may be PUT once before ``expires_at``."""

    id: str
    account_id: str
    content_type: str
    size: int
    created_at: datetime
    expires_at: datetime
    claimed_at: datetime | None = None


def storage_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


def url_for(upload_id: str) -> str:
    return SCHEME + upload_id


def parse_url(url: str) -> str | None:
    """The upload id of a ``reelgen-upload://`` URL; None for any other string."""
    if not url.startswith(SCHEME):
        return None
    upload_id = url[len(SCHEME) :]
    return upload_id if _ID.fullmatch(upload_id) else None


def create(conn: Connection, upload: Upload) -> None:
    conn.execute(insert(uploads).values(**upload.__dict__))


def get(conn: Connection, upload_id: str) -> Upload | None:
    row = conn.execute(select(uploads).where(uploads.c.id == upload_id)).one_or_none()
    if row is None:
        return None
    m = row._mapping
    return Upload(
        id=m["id"],
        account_id=m["account_id"],
        key=m["key"],
        format=m["format"],
        size=int(m["size"]),
        width=int(m["width"]),
        height=int(m["height"]),
        created_at=m["created_at"],
    )


def bytes_of(conn: Connection, account_id: str, *, lock: bool = False) -> int:
    """The bytes of every upload the account keeps. ``lock`` first locks the account row until the
    transaction ends (as the ledger does: FOR NO KEY UPDATE), so a check and the insert it allows
    are not interleaved with another upload's (SQLite's immediate transactions already are not)."""
    if lock:
        conn.execute(select(accounts.c.id).where(accounts.c.id == account_id).with_for_update(key_share=True))
    total = conn.execute(select(func.coalesce(func.sum(uploads.c.size), 0)).where(uploads.c.account_id == account_id))
    return int(total.scalar_one())


def mark_used(conn: Connection, upload_id: str, account_id: str, now: datetime) -> bool:
    """Mark the account's upload as named by a task; False when it has no such upload (unknown,
    another account's, or purged). One statement, so it cannot interleave with the purge."""
    result = conn.execute(
        update(uploads)
        .where(uploads.c.id == upload_id, uploads.c.account_id == account_id)
        .values(used_at=func.coalesce(uploads.c.used_at, now))
    )
    return result.rowcount == 1


def unused_before(conn: Connection, cutoff: datetime, limit: int = 100) -> list[tuple[str, str]]:
    """(id, storage key) of uploads created before ``cutoff`` that no task ever named."""
    stmt = (
        select(uploads.c.id, uploads.c.key)
        .where(uploads.c.used_at.is_(None), uploads.c.created_at < cutoff)
        .order_by(uploads.c.created_at)
        .limit(limit)
    )
    return [(r.id, r.key) for r in conn.execute(stmt)]


def purge_unused(conn: Connection, upload_id: str) -> bool:
    """Delete the upload's row if it is still unused; True when it was (then delete its object)."""
    return conn.execute(delete(uploads).where(uploads.c.id == upload_id, uploads.c.used_at.is_(None))).rowcount == 1


def _slot(r: Row[Any]) -> Slot:
    row = r._mapping
    return Slot(
        id=row["id"],
        account_id=row["account_id"],
        content_type=row["content_type"],
        size=int(row["size"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        claimed_at=row["claimed_at"],
    )


def create_slot(conn: Connection, slot: Slot) -> None:
    conn.execute(insert(upload_slots).values(**slot.__dict__))


def claim_slot(conn: Connection, slot_id: str, now: datetime) -> Slot | None:
    """Claim an unclaimed, unexpired slot (once: a conditional write); None when it is not one."""
    won = conn.execute(
        update(upload_slots)
        .where(upload_slots.c.id == slot_id, upload_slots.c.claimed_at.is_(None), upload_slots.c.expires_at > now)
        .values(claimed_at=now)
    ).rowcount
    if won != 1:
        return None
    return _slot(conn.execute(select(upload_slots).where(upload_slots.c.id == slot_id)).one())


def get_slot(conn: Connection, slot_id: str) -> Slot | None:
    row = conn.execute(select(upload_slots).where(upload_slots.c.id == slot_id)).one_or_none()
    return None if row is None else _slot(row)


def finish_slot(conn: Connection, upload: Upload) -> None:
    """The slot's bytes are stored: its upload row replaces it (one transaction)."""
    conn.execute(delete(upload_slots).where(upload_slots.c.id == upload.id))
    create(conn, upload)


def stale_slots(conn: Connection, cutoff: datetime, limit: int = 100) -> list[str]:
    """Ids of slots that expired before ``cutoff`` without becoming an upload."""
    stmt = select(upload_slots.c.id).where(upload_slots.c.expires_at < cutoff).order_by(upload_slots.c.expires_at)
    return [r.id for r in conn.execute(stmt.limit(limit))]


def purge_expired_slot(conn: Connection, slot_id: str, cutoff: datetime) -> bool:
    """Delete a slot still expired before ``cutoff``; True when it was (then delete its object)."""
    stmt = delete(upload_slots).where(and_(upload_slots.c.id == slot_id, upload_slots.c.expires_at < cutoff))
    return conn.execute(stmt).rowcount == 1
