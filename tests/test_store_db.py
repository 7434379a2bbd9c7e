"""Database: migrations, transaction discipline, retries of transient failures, UTC timestamps."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from reelgen.config import Settings
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import keys, ledger
from reelgen.store.db import Database, upgrade
from reelgen.store.tables import accounts, api_keys, metadata
from tests.store_fixtures import T0, pg_schema

TABLES = {
    "accounts",
    "api_keys",
    "tasks",
    "movements",
    "ledger_entries",
    "idempotency_keys",
    "webhook_deliveries",
    "webhook_endpoints",
    "account_limits",
    "uploads",
    "account_queue",
}


def _tables(db: Database) -> set[str]:
    return set(db.run(lambda conn: sa.inspect(conn).get_table_names()))


def test_migrations_from_empty_match_the_tables_and_are_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert db.current_revision() is None
        assert _tables(db) == set()
        upgrade(db)
        assert db.current_revision() == Database.head_revision() is not None
        assert _tables(db) >= TABLES | {"alembic_version"}

        def diff(conn: Any) -> list[Any]:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))

        assert db.run(diff) == []
        account = db.run(lambda conn: keys.create_account(conn, "kept"), immediate=True)
        db.upgrade()  # again: nothing to do, nothing lost
        assert db.current_revision() == Database.head_revision()
        assert db.run(lambda conn: keys.get_account(conn, account)) is not None
    finally:
        db.dispose()


def test_concurrent_upgrades_from_empty_all_succeed(db_url: str) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        db = Database(db_url)
        try:
            barrier.wait(timeout=30)
            db.upgrade()
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = Database(db_url)
    try:
        assert db.current_revision() == Database.head_revision()
    finally:
        db.dispose()


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout=7.0)
    try:
        with db.transaction() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
    finally:
        db.dispose()


def test_foreign_keys_are_enforced(db: Database) -> None:
    orphan_key = sa.insert(api_keys).values(
        id="k", account_id="nobody", name="n", digest="d", prefix="sk-abcde", last4="wxyz", created_at=T0
    )
    with pytest.raises(sa.exc.IntegrityError):
        db.run(lambda conn: conn.execute(orphan_key), immediate=True)


def test_in_memory_sqlite_and_other_backends_are_refused() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db"):
        with pytest.raises(ReelgenError) as info:
            Database(url)
        assert info.value.code is ErrorCode.INVALID_SETTINGS


def test_plain_postgresql_urls_use_psycopg() -> None:
    db = Database("postgresql://u:p@db.example:5432/reelgen")
    try:
        assert db.url == "postgresql+psycopg://u:p@db.example:5432/reelgen"
        assert not db.is_sqlite
        assert "p@" not in repr(db)
    finally:
        db.dispose()


def test_from_settings_creates_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nested" / "data")
    db = Database.from_settings(settings)
    try:
        db.upgrade()
        assert db.is_sqlite
        assert (tmp_path / "nested" / "data" / "reelgen.db").is_file()
    finally:
        db.dispose()


def test_timestamps_come_back_utc_aware(db: Database) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 30, 15, 123456, tzinfo=plus_two)

    def go(conn: Any) -> datetime:
        account = keys.create_account(conn, "tz", now=local)
        row = keys.get_account(conn, account)
        assert row is not None
        return row.created_at

    created = db.run(go, immediate=True)
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert created == datetime(2030, 6, 1, 12, 30, 15, 123456, tzinfo=UTC)


def test_naive_timestamps_are_refused(db: Database) -> None:
    with pytest.raises(sa.exc.StatementError) as info:
        db.run(lambda conn: keys.create_account(conn, "naive", now=datetime(2030, 1, 1)), immediate=True)
    assert isinstance(info.value.orig, ValueError)


def test_errors_from_the_function_roll_back_and_propagate(db: Database) -> None:
    account = db.run(lambda conn: keys.create_account(conn, "a"), immediate=True)

    def grant_then_fail(conn: Any) -> None:
        ledger.grant(conn, account, 100, T0)
        raise ReelgenError(ErrorCode.INVALID_INPUT, "changed my mind")

    with pytest.raises(ReelgenError, match="changed my mind"):
        db.run(grant_then_fail, immediate=True)
    assert db.run(lambda conn: ledger.balance(conn, account)).available == 0


# transient failures: real ones, produced by a second connection


def test_sqlite_stale_snapshot_is_retried(tmp_path: Path) -> None:
    """A deferred transaction whose snapshot went stale gets SQLITE_BUSY at its first write: retried."""
    path = tmp_path / "r.db"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    calls: list[int] = []

    def go(conn: Any) -> str:
        calls.append(1)
        conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar()  # snapshot starts
        if len(calls) == 1:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES ('x', 'other', '2030-01-01 00:00:00.000000')"
            )
            other.close()
        return keys.create_account(conn, "mine", now=T0)

    try:
        account = db.run(go)
        assert len(calls) == 2
        names = db.run(lambda conn: sorted(a.name for a in keys.list_accounts(conn)))
        assert names == ["mine", "other"]
        assert db.run(lambda conn: keys.get_account(conn, account)) is not None
    finally:
        db.dispose()


def test_sqlite_lock_held_too_long_becomes_service_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.05, retries=2)
    db.upgrade()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ReelgenError) as info:
            db.run(lambda conn: keys.create_account(conn, "x", now=T0), immediate=True)
        assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
        assert info.value.message == "The database is busy; retry."
        assert isinstance(info.value.__cause__, sa.exc.OperationalError)
        with pytest.raises(ReelgenError) as info2, db.transaction(immediate=True) as conn:
            conn.execute(sa.select(1))
        assert info2.value.code is ErrorCode.SERVICE_UNAVAILABLE
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        db.dispose()


def test_postgres_dropped_connection_is_retried() -> None:
    with pg_schema() as url:
        db = Database(url)
        admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            db.upgrade()
            calls: list[int] = []

            def go(conn: Any) -> str:
                calls.append(1)
                if len(calls) == 1:
                    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                    with admin.connect() as other:
                        other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                return keys.create_account(conn, "survivor", now=T0)

            account = db.run(go, immediate=True)
            assert len(calls) == 2
            assert db.run(lambda conn: keys.get_account(conn, account)) is not None
        finally:
            admin.dispose()
            db.dispose()


def test_postgres_lock_timeout_becomes_service_unavailable() -> None:
    with pg_schema() as url:
        db = Database(url, retries=2)
        blocker = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            db.upgrade()
            with blocker.connect() as other:
                other.execute(sa.text("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE"))

                def go(conn: Any) -> str:
                    conn.execute(sa.text("SET LOCAL lock_timeout = '50ms'"))
                    return keys.create_account(conn, "blocked", now=T0)

                with pytest.raises(ReelgenError) as info:
                    db.run(go, immediate=True)
                assert info.value.code is ErrorCode.SERVICE_UNAVAILABLE
                other.rollback()
            assert db.run(go, immediate=True)
        finally:
            blocker.dispose()
            db.dispose()
