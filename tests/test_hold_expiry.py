"""Holds expire like card authorisations (RELIABILITY 5).

A hold older than its TTL (``max_run_seconds`` + ``HOLD_SLACK_SECONDS``) is released and its task
fails with ``TIMEOUT``. First through one sweeper pass with the workers stopped, seen through the
service and the API's view; then the sweeper of a real ``reelgen serve`` process does it on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reelgen import service
from reelgen.domain import TaskStatus
from reelgen.store import ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import tasks as tasks_table
from reelgen.sweeper import HOLD_SLACK_SECONDS, sweep_once
from tests.api_fixtures import free_port
from tests.factories import generate_body, make_account

ROOT = Path(__file__).resolve().parent.parent


def _ttl(ctx: service.Context) -> float:
    return ctx.settings.max_run_seconds + HOLD_SLACK_SECONDS


def _backdate(db: Database, task_id: str, seconds: float) -> None:
    """Move the task's ``created_at`` ``seconds`` into the past (what time does to a stuck task)."""

    def go(conn: Any) -> None:
        created = conn.execute(sa.select(tasks_table.c.created_at).where(tasks_table.c.id == task_id)).scalar_one()
        conn.execute(
            sa.update(tasks_table)
            .where(tasks_table.c.id == task_id)
            .values(created_at=created - timedelta(seconds=seconds))
        )

    db.run(go, immediate=True)


def test_one_sweep_releases_expired_holds_and_fails_their_tasks_with_timeout(ctx: service.Context) -> None:
    owner = make_account(ctx, credits=1000)
    # three tasks, no workers running: one claimed by a worker that then died, one pending, one young
    stuck_running = service.submit(ctx, owner.id, generate_body(duration=3))
    claimed = ctx.db.run(
        lambda c: tasks.claim(c, worker_id="dead-worker", lease_seconds=10**6, now=ctx.clock()), immediate=True
    )
    assert claimed is not None and claimed.id == stuck_running["id"]
    stuck_pending = service.submit(ctx, owner.id, generate_body(duration=4))
    young = service.submit(ctx, owner.id, generate_body(duration=5))
    for task in (stuck_running, stuck_pending):
        _backdate(ctx.db, task["id"], _ttl(ctx) + 5)
    _backdate(ctx.db, young["id"], _ttl(ctx) - 60)

    report = sweep_once(ctx.db, ctx.settings)

    assert sorted(report.expired) == sorted([stuck_running["id"], stuck_pending["id"]])
    assert report.requeued == report.failed == []  # the dead worker's lease has not run out
    for task in (stuck_running, stuck_pending):
        view = service.get_task(ctx, owner.id, task["id"], "http://test/")
        assert view["status"] == "failed" and view["creditsUsed"] == 0 and view["result"] is None
        assert view["error"]["code"] == "TIMEOUT" and view["error"]["key"] == "timeout"
    assert service.get_task(ctx, owner.id, young["id"], "http://test/")["status"] == "pending"
    assert service.credits(ctx, owner.id) == {"credits": 1000 - young["creditsUsed"], "reserved": young["creditsUsed"]}
    assert ctx.db.run(ledger.check) == []

    # the dead worker wakes up and reports success: fenced, nothing captured
    late = ctx.db.run(
        lambda c: tasks.complete(
            c, stuck_running["id"], claimed.attempt, result_key="x.mp4", duration=3.0, has_audio=True, now=ctx.clock()
        ),
        immediate=True,
    )
    assert late is False
    # a second pass finds nothing more, and the hold of each expired task was released exactly once
    assert sweep_once(ctx.db, ctx.settings).expired == []
    assert ctx.db.run(ledger.check) == []
    assert service.credits(ctx, owner.id)["credits"] == 1000 - young["creditsUsed"]


def _wait_for(predicate: Any, timeout: float, server: subprocess.Popen[bytes], what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert server.poll() is None, f"reelgen serve exited with {server.returncode}"
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)


def test_reelgen_serve_sweeps_expired_holds_on_its_own(ctx: service.Context, tmp_path: Path) -> None:
    """No test code runs the sweeper here: the server's supervisor does, every few seconds."""
    owner = make_account(ctx, credits=1000)
    now = datetime.now(UTC)

    # A task of a profile this server does not serve (left from before the operator switched
    # profiles): its worker never claims it, so only the hold expiry can end it.
    def stuck(conn: Any) -> str:
        row = tasks.create(
            conn,
            account_id=owner.id,
            model="kling-3-0-text-to-video",
            profile="retired-profile",
            input={"prompt": "a fox", "duration": 3},
            prompt="a fox",
            price=126,
            seed=1,
            max_attempts=3,
            now=now - timedelta(seconds=_ttl(ctx) + 5),
        )
        ledger.reserve(conn, owner.id, row.id, 126, now)
        return row.id

    task_id = ctx.db.run(stuck, immediate=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env.update(
        REELGEN_DATA_DIR=str(tmp_path / "serve"),
        REELGEN_DATABASE_URL=ctx.db.url,
        REELGEN_SECRET_KEY=ctx.secret,
        REELGEN_MAX_RUN_SECONDS=str(ctx.settings.max_run_seconds),
        PYTHONPATH=str(ROOT),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "reelgen", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        row = _wait_for(
            lambda: (r := ctx.db.run(lambda c: tasks.get(c, task_id))) and r.status is TaskStatus.FAILED and r,
            90,
            server,
            "the server's sweeper expires the hold",
        )
        assert row.error_code == "TIMEOUT"
        assert service.credits(ctx, owner.id) == {"credits": 1000, "reserved": 0}
        assert ctx.db.run(ledger.check) == []
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
