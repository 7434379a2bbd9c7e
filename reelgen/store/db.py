"""The database handle: an engine, transactions with retry, and migrations.

One ``Database`` per process, built from ``Settings`` by the entry point (nothing happens at import
time). Everything that touches the store runs inside ``Database.run(fn)`` or ``Database.transaction()``.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on every
connection; SQLAlchemy emits ``BEGIN`` itself so that money-moving transactions can take the write
lock up front (``BEGIN IMMEDIATE``) and serialise cleanly instead of failing at their first write.
On PostgreSQL transactions are ordinary READ COMMITTED ones; the ledger locks the account row
(``SELECT ... FOR NO KEY UPDATE``) where money moves and the queue uses ``FOR UPDATE SKIP LOCKED``.

Transient failures (SQLite busy/locked, PostgreSQL serialization failures, deadlocks, dropped
connections) are retried a few times with backoff; once retries run out the caller gets
``ReelgenError(SERVICE_UNAVAILABLE)``, never a raw driver error.

A database that cannot take writes (disk full, read-only file or server, I/O error) is not retried:
the caller gets ``SERVICE_UNAVAILABLE`` with ``Retry-After`` at once, and the ``Database`` remembers
the refusal (``refused_write``), so readiness reports it until a write succeeds again.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from reelgen.config import Settings

__all__ = ["BUSY_MESSAGE", "UNWRITABLE_MESSAGE", "Database", "is_transient", "is_unwritable", "upgrade"]

T = TypeVar("T")
log = logging.getLogger(__name__)

BUSY_MESSAGE = "The database is busy; retry."
_MIGRATIONS = Path(__file__).with_name("migrations")
# SQLite result codes (the low byte of the extended code)
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock, lock not available,
# admin/crash shutdown, cannot connect now; class 08 (connection exceptions) is matched by prefix.
_PG_TRANSIENT = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})
# SQLite result codes of a database that cannot be written: read-only, I/O error, disk full
_SQLITE_UNWRITABLE = frozenset({8, 10, 13})
# PostgreSQL: read-only transaction, class 53 (insufficient resources: disk full, out of memory),
# I/O error
_PG_UNWRITABLE = frozenset({"25006", "58030"})
UNWRITABLE_MESSAGE = "The database cannot store anything now (disk full or read-only); retry later."
#: ``Retry-After`` of a refused write, and how long readiness reports it without a later success.
UNWRITABLE_RETRY_SECONDS = 30


class Database:
    """An engine plus the transaction discipline every store function relies on."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 10.0,
        retries: int = 6,
        pool_size: int = 10,
        max_overflow: int = 20,
    ) -> None:
        from sqlalchemy import create_engine, event
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS,
                f"unsupported database {parsed.drivername!r}: use sqlite:///PATH or postgresql+psycopg://...",
            )
        self.url: str = parsed.render_as_string(hide_password=False)
        #: ``time.monotonic()`` of the last write the database refused (disk full, read-only); None
        #: once a write transaction has committed since
        self.write_refused_at: float | None = None
        self.is_sqlite: bool = backend == "sqlite"
        self.retries = max(1, retries)
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query):
                raise ReelgenError(
                    ErrorCode.INVALID_SETTINGS,
                    "an in-memory SQLite database cannot be shared between connections; give a file path",
                )
            self.engine: Engine = create_engine(
                parsed,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=max_overflow,
                connect_args={"timeout": busy_timeout, "check_same_thread": False},
            )
            busy_ms = int(busy_timeout * 1000)

            @event.listens_for(self.engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                # take transaction control away from the sqlite3 module: SQLAlchemy emits BEGIN
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                try:
                    cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                    cur.execute("PRAGMA foreign_keys = ON")
                    cur.execute("PRAGMA journal_mode = WAL")
                    cur.execute("PRAGMA synchronous = NORMAL")
                finally:
                    cur.close()

            @event.listens_for(self.engine, "begin")
            def _sqlite_begin(conn: Connection) -> None:
                immediate = conn.get_execution_options().get("reelgen_immediate", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        else:
            self.engine = create_engine(parsed, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database the settings name; creates the directory of a SQLite file."""
        from sqlalchemy.engine import make_url

        url = settings.resolved_database_url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        return cls(url)

    def __repr__(self) -> str:
        return f"Database({self.display_url!r})"

    @property
    def display_url(self) -> str:
        """The URL with its password masked (``***``), for logs and command output."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    # transactions

    @contextmanager
    def _begin(self, immediate: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if immediate and self.is_sqlite:
                conn.execution_options(reelgen_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """One transaction, committed when the block ends without an exception.

        ``immediate=True`` takes SQLite's write lock at BEGIN (use it wherever money moves or a
        task changes state). A block cannot be re-run, so a transient failure here surfaces as
        ``SERVICE_UNAVAILABLE`` at once; prefer ``run`` which retries.
        """
        try:
            with self._begin(immediate) as conn:
                yield conn
        except Exception as exc:
            self._refuse_if_unwritable(exc)
            if is_transient(exc):
                raise ReelgenError(ErrorCode.SERVICE_UNAVAILABLE, BUSY_MESSAGE) from exc
            raise
        if immediate:
            self.write_refused_at = None

    def run(self, fn: Callable[[Connection], T], *, immediate: bool = False) -> T:
        """Call ``fn(conn)`` inside one transaction and return its result.

        The whole function is re-run, in a fresh transaction, after a transient failure, so ``fn``
        must do nothing but database work. A connection lost while committing is not retried: the
        commit may have happened, and running the function again could apply it twice.
        """
        delay = 0.01
        for attempt in range(1, self.retries + 1):
            committing = False
            try:
                with self._begin(immediate) as conn:
                    result = fn(conn)
                    committing = True
                if immediate:
                    self.write_refused_at = None
                return result
            except Exception as exc:
                self._refuse_if_unwritable(exc)
                if not is_transient(exc):
                    raise
                if committing and _is_disconnect(exc):
                    log.warning("connection lost while committing; outcome unknown: %s", exc)
                    raise ReelgenError(ErrorCode.SERVICE_UNAVAILABLE, BUSY_MESSAGE) from exc
                if attempt == self.retries:
                    log.warning("giving up after %d attempts: %s", attempt, exc)
                    raise ReelgenError(ErrorCode.SERVICE_UNAVAILABLE, BUSY_MESSAGE) from exc
                log.info("transient database error (attempt %d): %s", attempt, exc)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 3, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refuse_if_unwritable(self, exc: Exception) -> None:
        """``SERVICE_UNAVAILABLE`` with ``Retry-After`` (remembered) if ``exc`` says the database
        cannot be written now; otherwise nothing."""
        if is_unwritable(exc):
            self.write_refused_at = time.monotonic()
            log.error("the database refused a write: %s", _driver_error(exc))
            raise ReelgenError(
                ErrorCode.SERVICE_UNAVAILABLE,
                UNWRITABLE_MESSAGE,
                headers={"Retry-After": str(UNWRITABLE_RETRY_SECONDS)},
            ) from exc

    def refused_write_recently(self) -> bool:
        """Whether a write was refused (disk full, read-only) within ``UNWRITABLE_RETRY_SECONDS``
        and none has committed since."""
        refused = self.write_refused_at
        return refused is not None and time.monotonic() - refused < UNWRITABLE_RETRY_SECONDS

    def dispose(self) -> None:
        """Close every pooled connection (call at shutdown, and in a child after fork)."""
        self.engine.dispose()

    # migrations

    def upgrade(self) -> None:
        """Apply the Alembic migrations up to head (idempotent; safe when two processes start at once).

        The whole upgrade runs in one transaction that first takes a lock: a PostgreSQL advisory
        lock keyed by the schema, or SQLite's write lock. A second process waits, then finds the
        schema at head and does nothing.
        """
        from alembic import command

        def go(conn: Connection) -> None:
            if not self.is_sqlite:
                from sqlalchemy import text

                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('reelgen-migrate:' || current_schema()))"))
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

        self.run(go, immediate=True)

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        return self.run(lambda conn: MigrationContext.configure(conn).get_current_revision())

    @staticmethod
    def head_revision() -> str | None:
        """The newest revision the code ships."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def upgrade(db: Database) -> None:
    """Apply the migrations up to head (same as ``db.upgrade()``)."""
    db.upgrade()


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    return config


def _driver_error(exc: BaseException) -> BaseException:
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def _is_disconnect(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = _driver_error(exc)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(orig, psycopg.OperationalError):
        state = getattr(orig, "sqlstate", None)
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False


def is_unwritable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot store anything now (disk full, read-only, I/O)."""
    orig = _driver_error(exc)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        return code in _SQLITE_UNWRITABLE
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(orig, psycopg.Error):
        state = getattr(orig, "sqlstate", None) or ""
        return state in _PG_UNWRITABLE or state.startswith("53")
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database failure that a fresh transaction may not hit again."""
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = _driver_error(exc)
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        text = str(orig).lower()
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text or "busy" in text
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(orig, psycopg.Error):
        state = getattr(orig, "sqlstate", None)
        if state is not None:
            return state in _PG_TRANSIENT or state.startswith("08")
        return isinstance(orig, psycopg.OperationalError)
    return False
