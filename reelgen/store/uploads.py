"""Uploaded input images: who owns them and where their bytes are stored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select

from reelgen.schemas import UPLOAD_URL_PREFIX
from reelgen.store.tables import accounts, uploads

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["SCHEME", "Upload", "bytes_of", "create", "get", "parse_url", "storage_key", "url_for"]

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
