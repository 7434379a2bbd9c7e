"""Accounts and API keys. A key is shown once; the store keeps only its HMAC and a display hint.

``key = "sk-" + token_urlsafe(32)`` (256 random bits). The row holds HMAC-SHA256(pepper, key) in hex,
the first 8 characters and the last 4, so a leaked database cannot be used to call the API and an
operator can still tell keys apart. Lookup is by digest (unique index) and the digest is compared
again in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store.tables import accounts, api_keys

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, RowMapping

__all__ = [
    "KEY_PREFIX",
    "AccountRow",
    "IssuedKey",
    "KeyInfo",
    "create_account",
    "digest",
    "get_account",
    "issue_key",
    "list_accounts",
    "list_keys",
    "revoke_key",
    "verify_key",
]

KEY_PREFIX = "sk-"
_DISPLAY_CHARS = 8


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: ``key`` is the only copy of the secret, show it once."""

    key_id: str
    key: str
    prefix: str
    account_id: str


@dataclass(frozen=True)
class KeyInfo:
    """What the store knows about a key (never the key itself)."""

    key_id: str
    account_id: str
    name: str
    prefix: str
    last4: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    created_at: datetime
    available: int
    reserved: int
    granted: int
    captured: int


def digest(key: str, pepper: str) -> str:
    """HMAC-SHA256 of the key under the server's secret, as hex (what the store keeps)."""
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def create_account(conn: Connection, name: str, *, now: datetime | None = None) -> str:
    """A new account with no credits; returns its id."""
    name = name.strip()
    if not name:
        raise ReelgenError(ErrorCode.INVALID_INPUT, "an account needs a non-blank name")
    account_id = uuid.uuid4().hex
    conn.execute(insert(accounts).values(id=account_id, name=name[:200], created_at=now or datetime.now(UTC)))
    return account_id


def get_account(conn: Connection, account_id: str) -> AccountRow | None:
    row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one_or_none()
    return None if row is None else _account(row._mapping)


def list_accounts(conn: Connection) -> list[AccountRow]:
    """All accounts, oldest first."""
    rows = conn.execute(select(accounts).order_by(accounts.c.created_at, accounts.c.id))
    return [_account(r._mapping) for r in rows]


def issue_key(
    conn: Connection,
    account_id: str,
    name: str,
    pepper: str,
    *,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> IssuedKey:
    """Create a key for the account; the returned ``IssuedKey.key`` is never stored."""
    if not pepper:
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, "the key pepper (secret key) is empty")
    if conn.execute(select(accounts.c.id).where(accounts.c.id == account_id)).first() is None:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4().hex
    prefix = key[:_DISPLAY_CHARS]
    conn.execute(
        insert(api_keys).values(
            id=key_id,
            account_id=account_id,
            name=name.strip()[:200],
            digest=digest(key, pepper),
            prefix=prefix,
            last4=key[-4:],
            created_at=now or datetime.now(UTC),
            expires_at=expires_at,
        )
    )
    return IssuedKey(key_id=key_id, key=key, prefix=prefix, account_id=account_id)


def verify_key(conn: Connection, key: str, pepper: str, now: datetime) -> str | None:
    """The account id of a valid key; None for an unknown, revoked or expired one."""
    if not pepper or not key.startswith(KEY_PREFIX):
        return None
    wanted = digest(key, pepper)
    row = conn.execute(
        select(api_keys.c.account_id, api_keys.c.digest, api_keys.c.revoked_at, api_keys.c.expires_at).where(
            api_keys.c.digest == wanted
        )
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.digest, wanted):
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return str(row.account_id)


def revoke_key(conn: Connection, key_id: str, now: datetime) -> bool:
    """Revoke a key at once. False if there is no such key or it was already revoked."""
    result = conn.execute(
        update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return result.rowcount == 1


def list_keys(conn: Connection, account_id: str | None = None) -> list[KeyInfo]:
    """Keys (all, or one account's), oldest first."""
    stmt = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    if account_id is not None:
        stmt = stmt.where(api_keys.c.account_id == account_id)
    return [
        KeyInfo(
            key_id=r.id,
            account_id=r.account_id,
            name=r.name,
            prefix=r.prefix,
            last4=r.last4,
            created_at=r.created_at,
            revoked_at=r.revoked_at,
            expires_at=r.expires_at,
        )
        for r in conn.execute(stmt)
    ]


def _account(m: RowMapping) -> AccountRow:
    return AccountRow(
        id=m["id"],
        name=m["name"],
        created_at=m["created_at"],
        available=int(m["available"]),
        reserved=int(m["reserved"]),
        granted=int(m["granted"]),
        captured=int(m["captured"]),
    )
