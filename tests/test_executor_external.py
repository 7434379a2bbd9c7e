"""``executor = "none"``: an API-only replica starts no workers but still runs the sweeper."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Connection

from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.executor.base import pick
from reelgen.executor.external import ExternalWorkers
from reelgen.store import keys, ledger, tasks
from reelgen.store.db import Database
from tests.store_fixtures import submit


def test_api_only_replica_rescues_an_expired_lease(tmp_path: Path, db: Database) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=db.url, executor="none", secret_key="s")
    now = datetime.now(UTC)

    def fund(conn: Connection) -> str:
        account = keys.create_account(conn, "a")
        ledger.grant(conn, account, 1000, now)
        return account

    account = db.run(fund, immediate=True)
    task, _ = submit(db, account, 100, now=now)
    # a worker elsewhere claimed it and died: its lease ran out a minute ago
    claimed = db.run(
        lambda conn: tasks.claim(conn, worker_id="gone", lease_seconds=1, now=now - timedelta(minutes=1)),
        immediate=True,
    )
    assert claimed is not None and claimed.id == task.id

    executor = pick(settings)
    assert isinstance(executor, ExternalWorkers)
    executor.start()
    try:
        executor.notify()  # nobody to wake: a no-op
        deadline = time.monotonic() + 30
        while (
            row := db.run(lambda conn: tasks.get(conn, task.id))
        ) is not None and row.status is not TaskStatus.PENDING:
            assert time.monotonic() < deadline, "the replica's sweeper never requeued the task"
            time.sleep(0.05)
    finally:
        executor.stop()
    assert row is not None and (row.failures, row.worker_id) == (1, None)
    assert db.run(ledger.check) == []


def test_serve_flags_choose_the_executor(tmp_path: Path) -> None:
    from reelgen.admin import settings_from_args
    from reelgen.cli import build_parser

    args = build_parser().parse_args(["serve", "--executor", "ray", "--ray-address", "ray-head:6379"])
    settings = settings_from_args(args)
    assert (settings.executor, settings.ray_address) == ("ray", "ray-head:6379")
    assert settings_from_args(build_parser().parse_args(["serve", "--executor", "none"])).executor == "none"
