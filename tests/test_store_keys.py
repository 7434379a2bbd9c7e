"""API keys at rest (RELIABILITY 17): only an HMAC and a display hint are stored; revoked/expired fail."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import keys
from reelgen.store.db import Database
from reelgen.store.tables import api_keys
from tests.store_fixtures import T0

PEPPER = "pepper-for-tests"


def _issue(db: Database, **kw: Any) -> keys.IssuedKey:
    def go(conn: Any) -> keys.IssuedKey:
        account = keys.create_account(conn, "acme", now=T0)
        return keys.issue_key(conn, account, "ci key", PEPPER, now=T0, **kw)

    issued: keys.IssuedKey = db.run(go, immediate=True)
    return issued


def _verify(db: Database, key: str, *, pepper: str = PEPPER, at: timedelta = timedelta(0)) -> str | None:
    result: str | None = db.run(lambda conn: keys.verify_key(conn, key, pepper, T0 + at))
    return result


def test_issued_key_has_the_contract_shape_and_verifies(db: Database) -> None:
    issued = _issue(db)
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", issued.key)  # 32 random bytes, url-safe
    assert issued.prefix == issued.key[:8]
    assert _verify(db, issued.key) == issued.account_id
    assert _issue(db).key != issued.key


def test_only_the_hmac_prefix_and_last4_are_stored(db: Database) -> None:
    issued = _issue(db)
    row = db.run(lambda conn: conn.execute(sa.select(api_keys)).one()._mapping)
    assert row["digest"] == hmac.new(PEPPER.encode(), issued.key.encode(), hashlib.sha256).hexdigest()
    assert row["prefix"] == issued.key[:8] and row["last4"] == issued.key[-4:]
    secret_part = issued.key[8:-4]
    assert all(secret_part not in str(value) for value in row.values())
    info = db.run(keys.list_keys)
    assert [(k.key_id, k.prefix, k.last4) for k in info] == [(issued.key_id, issued.prefix, issued.key[-4:])]
    assert issued.key not in repr(info)


def test_the_database_files_never_contain_the_key(db: Database) -> None:
    issued = _issue(db)
    needle = issued.key.encode()
    if db.is_sqlite:
        path = Path(str(make_url(db.url).database))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert path in files and len(files) >= 2  # the database and its WAL
        for f in files:
            assert needle not in f.read_bytes(), f
            assert issued.key[3:].encode() not in f.read_bytes(), f
    else:
        dumped = db.run(lambda conn: conn.execute(sa.text("SELECT CAST(k AS text) FROM api_keys AS k")).scalars().all())
        assert len(dumped) == 1
        assert issued.key not in dumped[0] and issued.key[8:-4] not in dumped[0]


def test_revoked_key_is_rejected_at_once(db: Database) -> None:
    issued = _issue(db)
    assert db.run(lambda conn: keys.revoke_key(conn, issued.key_id, T0), immediate=True) is True
    assert _verify(db, issued.key) is None
    assert db.run(lambda conn: keys.revoke_key(conn, issued.key_id, T0), immediate=True) is False
    assert db.run(lambda conn: keys.revoke_key(conn, "no-such-key", T0), immediate=True) is False
    (info,) = db.run(keys.list_keys)
    assert info.revoked_at == T0


def test_rotation_new_key_works_old_one_revoked(db: Database) -> None:
    old = _issue(db)

    def rotate(conn: Any) -> keys.IssuedKey:
        new = keys.issue_key(conn, old.account_id, "rotated", PEPPER, now=T0 + timedelta(seconds=1))
        keys.revoke_key(conn, old.key_id, T0)
        return new

    new = db.run(rotate, immediate=True)
    assert _verify(db, new.key) == old.account_id
    assert _verify(db, old.key) is None
    assert [k.key_id for k in db.run(lambda c: keys.list_keys(c, old.account_id))] == [old.key_id, new.key_id]


def test_expired_key_is_rejected(db: Database) -> None:
    issued = _issue(db, expires_at=T0 + timedelta(hours=1))
    assert _verify(db, issued.key, at=timedelta(minutes=59)) == issued.account_id
    assert _verify(db, issued.key, at=timedelta(hours=1)) is None
    assert _verify(db, issued.key, at=timedelta(days=3)) is None


def test_unknown_wrong_pepper_and_malformed_keys_are_rejected(db: Database) -> None:
    issued = _issue(db)
    assert _verify(db, issued.key, pepper="another-pepper") is None
    assert _verify(db, issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")) is None
    assert _verify(db, issued.key[3:]) is None  # without the sk- prefix
    assert _verify(db, "sk-") is None
    assert _verify(db, "") is None


def test_key_for_unknown_account_is_refused(db: Database) -> None:
    with pytest.raises(ReelgenError) as info:
        db.run(lambda conn: keys.issue_key(conn, "nobody", "k", PEPPER), immediate=True)
    assert info.value.code is ErrorCode.ACCOUNT_NOT_FOUND
    assert db.run(keys.list_keys) == []


def test_accounts_are_listed_and_fetched(db: Database) -> None:
    def go(conn: Any) -> tuple[str, str]:
        return (
            keys.create_account(conn, " first ", now=T0),
            keys.create_account(conn, "second", now=T0 + timedelta(seconds=1)),
        )

    first, second = db.run(go, immediate=True)
    rows = db.run(keys.list_accounts)
    assert [(a.id, a.name) for a in rows] == [(first, "first"), (second, "second")]
    assert rows[0].available == rows[0].reserved == rows[0].granted == rows[0].captured == 0
    assert len(first) == 32 and int(first, 16) >= 0
    assert db.run(lambda conn: keys.get_account(conn, second)) == rows[1]
    assert db.run(lambda conn: keys.get_account(conn, "nobody")) is None
    with pytest.raises(ReelgenError) as info:
        db.run(lambda conn: keys.create_account(conn, "   "), immediate=True)
    assert info.value.code is ErrorCode.INVALID_INPUT
