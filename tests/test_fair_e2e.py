"""Fair queueing end to end (issue 19): real workers on the tiny engine, through the HTTP API.

Account A submits 20 tasks, then B and C submit 3 each. With one worker (SQLite and PostgreSQL)
and with two API replicas and two workers (PostgreSQL, separate processes), B's and C's tasks start
within the next few claims instead of after A's 20; with one worker the order in which tasks start
is exactly the order of the ``queuePosition`` the API reported. Weights and tiers are checked the
same way with one worker. Once B and C are done, A's
remaining tasks are cancelled (the rest of A's queue would show nothing new), and the ledger
checks clean: scheduling moves no credits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.executor.local import settings_env
from reelgen.store import keys, ledger
from reelgen.store.db import Database
from reelgen.store.tables import tasks
from tests.factories import Account, generate_body, make_account
from tests.store_fixtures import pg_schema
from tests.test_replicas import Cluster

pytestmark = pytest.mark.slow

DEADLINE = 600.0  # tiny renders on 2 busy cores: a few seconds each, plus a worker's start
BODY = generate_body(duration=3, audio=False)


def _wait(what: str, check: Callable[[], bool], logs: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.25)


def _submit(client: httpx.Client | TestClient, key: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        reply = client.post("/api/v1/generate", json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["data"]["id"])
    return ids


def _positions(client: httpx.Client | TestClient, owned: dict[str, str]) -> dict[str, int]:
    """Each task's ``queuePosition`` as its owner reads it (``owned``: task id -> key)."""
    out = {}
    for task_id, key in owned.items():
        data = client.get(f"/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        assert data["status"] == "pending", data
        out[task_id] = data["queuePosition"]
    return out


def _statuses(db: Database, ids: Iterable[str]) -> dict[str, str]:
    stmt = sa.select(tasks.c.id, tasks.c.status).where(tasks.c.id.in_(list(ids)))
    return {row.id: row.status for row in db.run(lambda conn: conn.execute(stmt).all())}


def _start_order(db: Database) -> list[str]:
    """Every task that a worker claimed, in the order they started."""
    stmt = sa.select(tasks.c.id).where(tasks.c.started_at.is_not(None)).order_by(tasks.c.started_at, tasks.c.id)
    return list(db.run(lambda conn: conn.execute(stmt).scalars().all()))


def _cancel_pending(
    client: httpx.Client | TestClient, key: str, ids: list[str], db: Database, positions: dict[str, int]
) -> None:
    """Cancel the still-pending tasks from the back of the queue forward: a worker claiming
    meanwhile always takes the front one, so what starts stays a run of consecutive positions."""
    pending = [t for t, status in _statuses(db, ids).items() if status == "pending"]
    for task_id in sorted(pending, key=positions.__getitem__, reverse=True):
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers={"Authorization": f"Bearer {key}"})


def _active(db: Database) -> int:
    stmt = sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status.in_(("pending", "processing")))
    return int(db.run(lambda conn: conn.execute(stmt).scalar_one()))


class OneWorker:
    """One ``python -m reelgen.worker`` on the context's settings, stopped (SIGTERM) on exit."""

    def __init__(self, ctx: service.Context, tmp_path: Path) -> None:
        self.log = tmp_path / "worker.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reelgen.worker", "--device", "cpu", "--worker-id", "w1"],
                env=settings_env(ctx.settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def __enter__(self) -> OneWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def test_weights_and_tiers_with_one_worker(client: TestClient, ctx: service.Context, tmp_path: Path) -> None:
    """A batch account submits first, then a high-tier one, then L (weight 2) and M (weight 1):
    the high tier runs first, L gets two turns for M's one, batch runs last, and the start order
    is the reported queue positions."""
    batch, high, light, heavy = (make_account(ctx, credits=100_000, name=n) for n in ("x", "h", "m", "l"))
    assert service.set_schedule(ctx, batch.id, weight=None, tier="batch") == {"weight": 1, "tier": "batch"}
    assert service.set_schedule(ctx, high.id, weight=None, tier="high") == {"weight": 1, "tier": "high"}
    assert service.set_schedule(ctx, heavy.id, weight=2, tier=None) == {"weight": 2, "tier": "normal"}
    owner: dict[str, Account] = {}
    for acc, n in ((batch, 2), (high, 2), (heavy, 3), (light, 3)):
        owner.update({t: acc for t in _submit(client, acc.key, n)})
    positions = _positions(client, {t: acc.key for t, acc in owner.items()})
    with OneWorker(ctx, tmp_path) as worker:
        _wait("every task to end", lambda: _active(ctx.db) == 0, worker.tail)
    order = _start_order(ctx.db)
    assert [positions[t] for t in order] == list(range(10))
    names = {batch.id: "X", high.id: "H", heavy.id: "L", light.id: "M"}
    assert "".join(names[owner[t].id] for t in order) == "HHLMLLMMXX"
    assert set(_statuses(ctx.db, order).values()) == {"completed"}
    assert ctx.db.run(ledger.check) == []


def test_one_worker_serves_every_account_in_turn(client: TestClient, ctx: service.Context, tmp_path: Path) -> None:
    a, b, c = (make_account(ctx, credits=100_000, name=n) for n in ("a", "b", "c"))
    ids_a = _submit(client, a.key, 20)
    late = _submit(client, b.key, 3) + _submit(client, c.key, 3)
    owner: dict[str, Account] = {**{t: a for t in ids_a}, **{t: b for t in late[:3]}, **{t: c for t in late[3:]}}
    positions = _positions(client, {t: acc.key for t, acc in owner.items()})
    assert sorted(positions.values()) == list(range(26))

    with OneWorker(ctx, tmp_path) as worker:
        _wait(
            "B's and C's tasks to complete",
            lambda: set(_statuses(ctx.db, late).values()) == {"completed"},
            worker.tail,
        )
        _cancel_pending(client, a.key, ids_a, ctx.db, positions)
        _wait("A's running task to end", lambda: _active(ctx.db) == 0)

    order = _start_order(ctx.db)
    # the tasks started exactly in the order of the positions the API reported, from position 0 on
    assert [positions[t] for t in order] == list(range(len(order))), (order, positions)
    # ... which takes turns: all of B's and C's six within the first nine, not after A's twenty
    assert all(order.index(t) < 9 for t in late), [owner[t].id for t in order]
    assert ctx.db.run(ledger.check) == []


def test_two_apis_and_two_workers_serve_every_account_in_turn(tmp_path: Path) -> None:
    with pg_schema() as url:
        cluster = Cluster.on(url, tmp_path)
        db, settings = cluster.db, cluster.settings

        def fund(conn: Any) -> list[str]:
            made = []
            for name in ("a", "b", "c"):
                account = keys.create_account(conn, name)
                ledger.grant(conn, account, 100_000, service.utcnow())
                made.append(keys.issue_key(conn, account, name, settings.secret_key or "").key)
            return made

        key_a, key_b, key_c = db.run(fund, immediate=True)
        try:
            cluster.start_api("api-1")
            cluster.start_api("api-2")
            with (
                httpx.Client(base_url=cluster.apis[0], timeout=60) as one,
                httpx.Client(base_url=cluster.apis[1], timeout=60) as two,
            ):
                ids_a = _submit(one, key_a, 20)
                late = _submit(two, key_b, 3) + _submit(one, key_c, 3)
                keyed = {**{t: key_a for t in ids_a}, **{t: key_b for t in late[:3]}, **{t: key_c for t in late[3:]}}
                positions = _positions(two, keyed)
                assert sorted(positions.values()) == list(range(26))  # both replicas see one queue
                assert positions == _positions(one, keyed)
                cluster.start_worker("worker-1")
                cluster.start_worker("worker-2")
                cluster.wait(
                    "B's and C's tasks to complete",
                    lambda: set(_statuses(db, late).values()) == {"completed"},
                    DEADLINE,
                )
                _cancel_pending(one, key_a, ids_a, db, positions)
                cluster.wait("A's running tasks to end", lambda: _active(db) == 0, DEADLINE)
            order = _start_order(db)
            # two workers claim side by side, so two neighbours may start a moment apart either way:
            # B's and C's six still all start within the first ten, not after A's twenty
            assert all(order.index(t) < 10 for t in late), order
            workers = db.run(lambda conn: set(conn.execute(sa.select(tasks.c.worker_id)).scalars().all()))
            assert {"worker-1", "worker-2"} <= workers
            check = cluster.ledger_check_cli()
            assert check.returncode == 0 and "ledger check OK" in check.stdout, check.stdout + check.stderr
        finally:
            cluster.stop()
            db.dispose()
