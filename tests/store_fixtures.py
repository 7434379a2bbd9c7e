"""Store fixtures: a migrated ``Database`` on SQLite (a file in tmp_path) and on PostgreSQL.

The PostgreSQL variant gets a fresh schema per test (``CREATE SCHEMA t_<random>``, reached through
``search_path``) that is dropped afterwards, so parallel and CI runs never see each other's rows.
Set ``REELGEN_TEST_PG_URL`` to point at another server. When PostgreSQL is unreachable the
PostgreSQL variants are skipped with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import ledger, tasks
from reelgen.store.db import Database

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
#: A fixed clock for store tests (timestamps are injected, never read from the wall clock).
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def pg_url() -> str:
    return os.environ.get("REELGEN_TEST_PG_URL") or DEFAULT_PG_URL


@functools.cache
def _pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); asked once per process."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url(), connect_args={"connect_timeout": 3}, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) the calling test when PostgreSQL is unreachable."""
    reason = _pg_unreachable()
    if reason is None:
        return
    where = f"PostgreSQL at {pg_url()} (REELGEN_TEST_PG_URL) is unreachable: {reason}"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{where}; CI=true requires it", pytrace=False)
    pytest.skip(where)


def _with_options(url: str, *options: str) -> str:
    """``url`` with libpq ``-c`` options appended to any it already has."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    existing = parsed.query.get("options", "")
    merged = " ".join([*([existing] if isinstance(existing, str) and existing else []), *options])
    return parsed.update_query_dict({"options": merged}).render_as_string(hide_password=False)


# Test commits do not wait for the WAL flush: only the durability of the last commits before a
# server crash is lost, which tests never need, and PostgreSQL DDL and commits get ~3x faster.
_FAST_COMMIT = "-csynchronous_commit=off"


@functools.cache
def _pg_admin() -> Any:
    import sqlalchemy as sa

    return sa.create_engine(
        _with_options(pg_url(), _FAST_COMMIT), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    )


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema; yields a URL whose search_path points at it."""
    import sqlalchemy as sa

    require_postgres()
    name = f"t_{secrets.token_hex(6)}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield _with_options(pg_url(), f"-csearch_path={name}", _FAST_COMMIT)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (not migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reelgen.db'}"
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database on each backend (SQLite file, PostgreSQL schema).

    The migrations run once per test process, into a template; each test gets a copy of it (the
    SQLite file copied, the PostgreSQL schema's ``pg_dump`` replayed under the test's schema name),
    which is the same schema at a fraction of the cost of running every migration again. The
    migrations themselves are tested from empty in ``tests/test_store_db.py``."""
    if not _copy_migrated(db_url):
        Database(db_url).upgrade()  # no pg_dump here: migrate this one directly
    database = Database(db_url)
    try:
        yield database
    finally:
        database.dispose()


def _copy_migrated(url: str) -> bool:
    """Give the empty database at ``url`` the migrated template's schema and rows; False where no
    template can be had (PostgreSQL without a matching ``pg_dump``)."""
    import shutil

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        shutil.copyfile(_sqlite_template(), str(parsed.database))
        return True
    script = _pg_template_script()
    if script is None:
        return False
    schema = _search_path(url)
    admin = _pg_admin()
    with admin.connect() as conn:  # psycopg runs a parameterless script whole, statement by statement
        conn.connection.driver_connection.execute(script.replace(_PG_TEMPLATE_TOKEN, schema))
    return True


@functools.cache
def _sqlite_template() -> str:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="reelgen-template-")) / "reelgen.db"
    template = Database(f"sqlite:///{path}")
    template.upgrade()
    template.dispose()  # the last connection closing folds the WAL into the file: one file to copy
    return str(path)


#: The name the template schema has in its dump: unique enough that replacing it renames nothing else.
_PG_TEMPLATE_TOKEN = f"reelgen_template_{secrets.token_hex(8)}"


@functools.cache
def _pg_template_script() -> str | None:
    """The migrated template schema as SQL (``pg_dump``: tables, indexes, constraints, rows such as
    the Alembic version) with its schema's name as ``_PG_TEMPLATE_TOKEN``; its ``CREATE SCHEMA`` is
    left out (the test's schema exists). None when ``pg_dump`` is missing or fails."""
    import shutil
    import subprocess

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        return None
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{_PG_TEMPLATE_TOKEN}"'))
    try:
        template = Database(_with_options(pg_url(), f"-csearch_path={_PG_TEMPLATE_TOKEN}", _FAST_COMMIT))
        template.upgrade()
        template.dispose()
        server = make_url(pg_url())
        cmd = [pg_dump, "--schema", _PG_TEMPLATE_TOKEN, "--no-owner", "--no-privileges", "--inserts"]
        cmd += ["--host", server.host or "127.0.0.1", "--port", str(server.port or 5432)]
        cmd += ["--username", server.username or "postgres", "--dbname", server.database or "postgres"]
        env = {**os.environ, **({"PGPASSWORD": server.password} if server.password else {})}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{_PG_TEMPLATE_TOKEN}" CASCADE'))
    if done.returncode != 0:
        return None
    # psql's meta-commands (newer dumps fence themselves with \restrict) and the schema's own creation go
    lines = [
        line
        for line in done.stdout.splitlines()
        if not line.startswith("\\") and not line.startswith(f"CREATE SCHEMA {_PG_TEMPLATE_TOKEN}")
    ]
    return "\n".join(lines)


def _search_path(url: str) -> str:
    from sqlalchemy.engine import make_url

    options = str(make_url(url).query.get("options", ""))
    return next(opt.removeprefix("-csearch_path=") for opt in options.split() if opt.startswith("-csearch_path="))


# helpers shared by the store tests (and by spawned child processes, so they live in a module)


def submit(
    db: Database,
    account_id: str,
    price: int,
    *,
    now: datetime = T0,
    profile: str = "tiny",
    max_attempts: int = 3,
) -> tuple[tasks.TaskRow, int]:
    """Create a task and reserve its price in one immediate transaction, as the service does."""

    def go(conn: Any) -> tuple[tasks.TaskRow, int]:
        task = tasks.create(
            conn,
            account_id=account_id,
            model="kling-3-0-text-to-video",
            profile=profile,
            input={"prompt": "a fox", "duration": 3},
            prompt="a fox",
            price=price,
            seed=7,
            max_attempts=max_attempts,
            now=now,
        )
        return task, ledger.reserve(conn, account_id, task.id, price, now)

    result: tuple[tasks.TaskRow, int] = db.run(go, immediate=True)
    return result


def reserve_in_process(url: str, account_id: str, price: int, rounds: int, barrier: Any, results: Any) -> None:
    """Child process body: ``rounds`` submits on its own Database, each round started together
    with the other processes through ``barrier``; reports the outcome of each."""
    db = Database(url)
    outcomes: list[str] = []
    try:
        db.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())  # connect before the race
        for i in range(rounds):
            barrier.wait(timeout=60)
            try:
                submit(db, account_id, price, now=T0 + timedelta(microseconds=i))
                outcomes.append("ok")
            except ReelgenError as exc:
                outcomes.append(str(exc.code) if exc.code is ErrorCode.INSUFFICIENT_CREDITS else repr(exc))
            except Exception as exc:
                outcomes.append(repr(exc))
    finally:
        db.dispose()
        results.put(outcomes)
