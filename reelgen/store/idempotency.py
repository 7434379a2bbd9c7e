"""Idempotency keys: the first response to (account, key), replayed for 24 hours.

``begin`` runs first inside the submit transaction. It inserts the key's row with ``ON CONFLICT DO
NOTHING``: on PostgreSQL a concurrent insert of the same (account, key) waits until the first
transaction ends, then does nothing, and the re-read sees the committed row, so 50 racing
duplicates create one task and one hold and all answer the same body. On SQLite the immediate
transaction already serialises them. ``finish`` stores the response in the same transaction that
created the task and its hold, so a key is never visible without its response.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store.tables import idempotency_keys

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["MAX_KEY_LENGTH", "TTL", "Replay", "begin", "finish", "purge_expired", "request_hash", "validate_key"]

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    """The stored first response: replay it instead of doing the work again."""

    status_code: int
    data: dict[str, Any]


def validate_key(key: str) -> str:
    """1-255 printable ASCII characters, or ``INVALID_INPUT``."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"Invalid Idempotency-Key: use 1-{MAX_KEY_LENGTH} printable ASCII characters.",
            details=[{"field": "header.Idempotency-Key", "message": f"1-{MAX_KEY_LENGTH} printable ASCII characters"}],
        )
    return key


def request_hash(body: Any) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys): key order and spacing do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _insert_ignoring_duplicates(conn: Connection, values: dict[str, Any]) -> bool:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(idempotency_keys).values(**values).on_conflict_do_nothing()
        return conn.execute(pg.returning(idempotency_keys.c.key)).first() is not None
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    lite = sqlite_insert(idempotency_keys).values(**values).on_conflict_do_nothing()
    # rowcount is unreliable for INSERT .. ON CONFLICT on some drivers: ask for the row instead
    return conn.execute(lite.returning(idempotency_keys.c.key)).first() is not None


def begin(conn: Connection, account_id: str, key: str, digest: str, now: datetime) -> Replay | None:
    """Claim ``key`` for this request, or return the response it already has.

    None: the key is new (or its previous use expired); do the work, then call ``finish``.
    ``IDEMPOTENCY_KEY_REUSED`` when the key was used with another body.
    """
    where = (idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)
    conn.execute(delete(idempotency_keys).where(*where, idempotency_keys.c.expires_at <= now))
    values = {
        "account_id": account_id,
        "key": key,
        "request_hash": digest,
        "status_code": 0,
        "created_at": now,
        "expires_at": now + TTL,
    }
    if _insert_ignoring_duplicates(conn, values):
        return None
    row = conn.execute(select(idempotency_keys).where(*where)).one()
    if row.request_hash != digest:
        raise ReelgenError(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "This Idempotency-Key was already used with a different request body.",
        )
    if row.response is None:  # only possible if a caller forgot ``finish``: never replay nothing
        raise RuntimeError(f"idempotency key row for account {account_id} has no response")
    return Replay(status_code=int(row.status_code), data=json.loads(row.response))


def finish(conn: Connection, account_id: str, key: str, status_code: int, data: dict[str, Any], task_id: str) -> None:
    """Store the response for ``key`` (same transaction as ``begin`` and the work)."""
    conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.account_id == account_id, idempotency_keys.c.key == key)
        .values(status_code=status_code, response=json.dumps(data, separators=(",", ":")), task_id=task_id)
    )


def purge_expired(conn: Connection, now: datetime) -> int:
    """Delete every key older than its 24 hours; returns how many."""
    return int(conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at <= now)).rowcount)
