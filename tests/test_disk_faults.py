"""Issue 15, defect 5: a full or read-only disk answers 503 with ``Retry-After`` (never a 500) on
``/generate`` and uploads, and ``/readyz`` says not ready until writes succeed again.

The faults are real: a database that refuses writes (SQLite ``PRAGMA query_only``, PostgreSQL
``default_transaction_read_only``, set on every new connection), and a data directory on a tiny
tmpfs filled to the last block (root only: it mounts one)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event

from reelgen import service
from reelgen.api.app import create_app
from reelgen.store import ledger
from reelgen.store.db import Database
from tests.api_fixtures import make_ctx, make_settings
from tests.factories import Account, generate_body, make_account
from tests.leaks import leaks


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def assert_unavailable(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(r.headers["retry-after"]) > 0
    assert leaks(r.text, sent="", error=True) == []


@contextlib.contextmanager
def read_only(db: Database) -> Iterator[None]:
    """Every new connection of ``db`` refuses writes, as a read-only file or replica would."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if db.is_sqlite:
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("SET default_transaction_read_only = on")
        cur.close()
        if not db.is_sqlite:
            dbapi_conn.commit()

    event.listen(db.engine, "connect", on_connect)
    db.engine.dispose()
    try:
        yield
    finally:
        event.remove(db.engine, "connect", on_connect)
        db.engine.dispose()


def test_read_only_database(client: TestClient, ctx: service.Context) -> None:
    acc = make_account(ctx, credits=10_000)
    before = ctx.db.run(lambda conn: ledger.balance(conn, acc.id))
    assert client.get("/readyz").status_code == 200
    with read_only(ctx.db):
        assert_unavailable(client.post("/api/v1/generate", json=generate_body(), headers=acc.headers))
        assert_unavailable(client.post("/api/v1/upload", content=_png(), headers=acc.headers))
        assert_unavailable(client.get("/readyz"))
        assert client.get("/healthz").status_code == 200  # alive, only not ready
        assert client.get("/api/v1/credits", headers=acc.headers).status_code == 200  # reads still work
    assert ctx.db.run(lambda conn: ledger.balance(conn, acc.id)) == before
    assert ctx.db.run(ledger.check) == []
    # writable again: the next write succeeds and readiness follows
    assert client.post("/api/v1/generate", json=generate_body(), headers=acc.headers).status_code == 200
    assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------- a full disk (tmpfs, root only)
def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "4m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to its last block; returns the filler file."""
    filler = disk / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with contextlib.suppress(OSError), filler.open("ab") as f:
        while True:
            f.write(b"\0")
            f.flush()
    return filler


def test_full_disk(small_disk: Path) -> None:
    """The database and the outputs share a disk that fills up."""
    db = Database(f"sqlite:///{small_disk / 'reelgen.db'}")
    db.upgrade()
    try:
        settings = make_settings(small_disk, db, data_dir=small_disk / "data")
        ctx = make_ctx(settings, db)
        acc: Account = make_account(ctx, credits=10_000)
        with TestClient(create_app(settings, start_executor=False, ctx=ctx), raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            filler = _fill(small_disk)
            body = {**generate_body(), "input": {**generate_body()["input"], "prompt": "x" * 2000}}
            for _ in range(50):  # enough new rows to need a page the disk cannot give
                r = client.post("/api/v1/generate", json=body, headers=acc.headers)
                if r.status_code != 200:
                    break
            assert_unavailable(r)
            assert_unavailable(client.post("/api/v1/upload", content=_png(), headers=acc.headers))
            assert_unavailable(client.get("/readyz"))
            filler.unlink()
            assert client.post("/api/v1/generate", json=body, headers=acc.headers).status_code == 200
            assert client.get("/readyz").status_code == 200
            assert db.run(ledger.check) == []
    finally:
        db.dispose()


def test_read_only_storage(small_disk: Path, tmp_path: Path) -> None:
    """The outputs' disk is remounted read-only (the database lives elsewhere)."""
    db = Database(f"sqlite:///{tmp_path / 'reelgen.db'}")
    db.upgrade()
    try:
        settings = make_settings(tmp_path, db, data_dir=small_disk / "data")
        ctx = make_ctx(settings, db)
        acc: Account = make_account(ctx, credits=10_000)
        with TestClient(create_app(settings, start_executor=False, ctx=ctx), raise_server_exceptions=False) as client:
            assert client.get("/readyz").status_code == 200
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
            try:
                assert_unavailable(client.post("/api/v1/upload", content=_png(), headers=acc.headers))
                assert_unavailable(client.get("/readyz"))
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
            assert client.post("/api/v1/upload", content=_png(), headers=acc.headers).status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        db.dispose()
