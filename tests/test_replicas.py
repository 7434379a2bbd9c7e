"""Several API replicas and several workers on one PostgreSQL database (RELIABILITY 11).

Real processes only: two ``reelgen serve`` API replicas with ``REELGEN_EXECUTOR=none`` (no
workers of their own; each runs the sweeper) and two ``python -m reelgen.worker`` processes on
the tiny engine, all sharing one per-test PostgreSQL schema and nothing else but the data
directory. Each process names itself in ``application_name`` so the connection-loss test can
``pg_terminate_backend`` exactly its connections (API and worker) in the middle of a burst.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.executor.local import settings_env
from reelgen.store import keys, ledger
from reelgen.store.db import Database
from reelgen.store.tables import movements, tasks
from tests.api_fixtures import free_port
from tests.factories import generate_body
from tests.store_fixtures import pg_schema

pytestmark = pytest.mark.slow

PRICE = 84  # ltx-2-tiny, standard, 3 s, no audio (the cheapest render)
TASKS = 100
START_DEADLINE = 120.0
FINISH_DEADLINE = 900.0


def with_app_name(url: str, name: str) -> str:
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


@dataclass
class Cluster:
    """The processes of one test, their logs, and the funded account's key."""

    url: str
    tag: str
    tmp: Path
    settings: Settings
    db: Database
    key: str = ""
    account: str = ""
    apis: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def on(cls, url: str, tmp: Path) -> Cluster:
        """A cluster's shared settings on the migrated PostgreSQL schema at ``url`` (nothing started)."""
        db = Database(url)
        db.upgrade()
        settings = Settings(
            data_dir=tmp / "data",
            database_url=url,
            profile="ltx-2-tiny",
            secret_key="replicas-share-this-secret",
            lease_seconds=8.0,
            heartbeat_seconds=1.0,
            shutdown_grace_seconds=5.0,
        )
        return cls(url=url, tag=f"rg-{secrets.token_hex(5)}", tmp=tmp, settings=settings, db=db)

    def env(self, role: str) -> dict[str, str]:
        env = settings_env(self.settings)
        env["REELGEN_DATABASE_URL"] = with_app_name(self.url, f"{self.tag}-{role}")
        env["REELGEN_EXECUTOR"] = "none"
        # one account submits the whole burst: lift the per-account request and active-task caps
        env["REELGEN_RATE_LIMIT_RPM"] = "0"
        env["REELGEN_MAX_ACTIVE_TASKS"] = "0"
        return env

    def spawn(self, role: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{role}.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd, env=self.env(role), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append(proc)
        return proc

    def start_api(self, name: str) -> None:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "reelgen",
            "serve",
            "--executor",
            "none",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self.spawn(name, cmd)
        url = f"http://127.0.0.1:{port}"
        self.wait(f"{name} to answer /readyz", lambda: _ready(url), START_DEADLINE)
        self.apis.append(url)

    def start_worker(self, name: str) -> None:
        self.spawn(name, [sys.executable, "-m", "reelgen.worker", "--device", "cpu", "--worker-id", name])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.tmp.glob("*.log"))

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for proc in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"pid {proc.pid} exited with {proc.returncode} waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def statuses(self) -> Counter[str]:
        rows = self.db.run(lambda conn: conn.execute(sa.select(tasks.c.status)).scalars().all())
        return Counter(rows)

    def wait_all_terminal(self) -> Counter[str]:
        active = {TaskStatus.PENDING.value, TaskStatus.PROCESSING.value}
        self.wait("every task to end", lambda: not any(self.statuses()[s] for s in active), FINISH_DEADLINE)
        return self.statuses()

    def ledger_check_cli(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reelgen", "ledger", "check"],
            env=self.env("ledger-check"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with pg_schema() as url:
        c = Cluster.on(url, tmp_path)
        db, settings = c.db, c.settings

        def fund(conn: Any) -> tuple[str, str]:
            account = keys.create_account(conn, "load")
            ledger.grant(conn, account, 10 * TASKS * PRICE, _now())
            return account, keys.issue_key(conn, account, "load", settings.secret_key or "").key

        c.account, c.key = db.run(fund, immediate=True)
        try:
            c.start_api("api-1")
            c.start_api("api-2")
            c.start_worker("worker-1")
            c.start_worker("worker-2")
            yield c
        finally:
            c.stop()
            db.dispose()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def submit_until_accepted(api: str, key: str, seen: list[httpx.Response]) -> str:
    """POST one generation, retrying 503s (after their Retry-After); returns the task id."""
    body = generate_body(duration=3, audio=False)
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for _ in range(100):
            reply = c.post("/api/v1/generate", json=body)
            seen.append(reply)
            if reply.status_code == 200:
                task_id: str = reply.json()["data"]["id"]
                return task_id
            if reply.status_code != 503:
                raise AssertionError(f"unexpected {reply.status_code}: {reply.text}")
            time.sleep(min(2.0, float(reply.headers.get("retry-after", "1"))))
    raise AssertionError("never accepted")


def assert_clean_errors(replies: list[httpx.Response]) -> None:
    for r in replies:
        assert r.status_code in (200, 503), (r.status_code, r.text)
        if r.status_code == 503:
            assert r.headers.get("retry-after"), r.headers
            error = r.json()["error"]
            assert error["code"] == "SERVICE_UNAVAILABLE"
            assert "Traceback" not in r.text and "/reelgen/" not in r.text and "psycopg" not in r.text


def movement_kinds(db: Database) -> dict[str, Counter[str]]:
    stmt = sa.select(movements.c.task_id, movements.c.kind).where(movements.c.task_id.is_not(None))
    out: dict[str, Counter[str]] = {}
    for task_id, kind in db.run(lambda conn: conn.execute(stmt).all()):
        out.setdefault(task_id, Counter())[kind] += 1
    return out


def test_two_apis_two_workers_complete_100_tasks_exactly_once(cluster: Cluster) -> None:
    replies: list[httpx.Response] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda i: submit_until_accepted(cluster.apis[i % 2], cluster.key, replies), range(TASKS)))
    assert len(set(ids)) == TASKS
    assert_clean_errors(replies)
    statuses = cluster.wait_all_terminal()
    assert statuses == Counter({TaskStatus.COMPLETED.value: TASKS}), cluster.logs()

    kinds = movement_kinds(cluster.db)
    assert set(kinds) == set(ids)
    assert all(k == Counter({"reserve": 1, "capture": 1}) for k in kinds.values()), kinds
    # both replicas took submissions and both workers ran tasks
    by_worker = Counter(cluster.db.run(lambda conn: conn.execute(sa.select(tasks.c.worker_id)).scalars().all()))
    assert set(by_worker) == {"worker-1", "worker-2"}, by_worker
    balance = cluster.db.run(lambda conn: ledger.balance(conn, cluster.account))
    assert (balance.available, balance.reserved) == (10 * TASKS * PRICE - TASKS * PRICE, 0)

    check = cluster.ledger_check_cli()
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ledger check OK" in check.stdout
    # every result is served by either replica
    task = ids[0]
    for api in cluster.apis:
        reply = httpx.get(
            f"{api}/api/v1/tasks/{task}/download?mode=proxy", headers={"Authorization": f"Bearer {cluster.key}"}
        )
        assert reply.status_code == 200 and reply.content[4:8] == b"ftyp"


def test_connection_loss_mid_burst_gives_retryable_errors_and_every_task_ends(cluster: Cluster) -> None:
    """``pg_terminate_backend`` on every API and worker connection, over and over, during a burst."""
    admin = sa.create_engine(cluster.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    stop = threading.Event()
    killed: list[int] = []
    kill_sql = sa.text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name LIKE :tag AND pid <> pg_backend_pid()"
    )

    def killer() -> None:
        with admin.connect() as conn:
            while not stop.wait(0.3):
                killed.append(len(conn.execute(kill_sql, {"tag": f"{cluster.tag}-%"}).all()))

    thread = threading.Thread(target=killer, daemon=True)
    replies: list[httpx.Response] = []
    try:
        thread.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(
                pool.map(lambda i: submit_until_accepted(cluster.apis[i % 2], cluster.key, replies), range(TASKS))
            )
        # keep cutting connections while the workers are busy with the burst
        cluster.wait("some tasks to complete under fire", lambda: cluster.statuses()["completed"] >= 10, 300)
    finally:
        stop.set()
        thread.join()
        admin.dispose()
    assert sum(killed) > 0, "no connection was terminated"
    assert_clean_errors(replies)
    # healed: the replicas take cancels again; what has not started yet is cancelled (the burst's
    # every task running to the end is the test above), what has keeps running to its end
    pending = cluster.db.run(
        lambda conn: (
            conn.execute(sa.select(tasks.c.id).where(tasks.c.status == TaskStatus.PENDING.value)).scalars().all()
        )
    )
    for i, task_id in enumerate(pending):
        reply = httpx.post(
            f"{cluster.apis[i % 2]}/api/v1/tasks/{task_id}/cancel",
            headers={"Authorization": f"Bearer {cluster.key}"},
            timeout=30,
        )
        assert reply.status_code in (200, 409), (reply.status_code, reply.text)  # 409: it started meanwhile
    statuses = cluster.wait_all_terminal()
    # every task the APIs accepted is in the store and ended; a 503 whose commit had in fact gone
    # through leaves one more task (charged or released like any other), never a lost one
    assert len(set(ids)) == TASKS and sum(statuses.values()) >= TASKS
    assert set(statuses) <= {TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value}
    assert statuses[TaskStatus.COMPLETED.value] >= 10
    kinds = movement_kinds(cluster.db)
    for task_id, k in kinds.items():
        assert k["reserve"] == 1 and k["capture"] + k["release"] == 1, (task_id, k)
    check = cluster.ledger_check_cli()
    assert check.returncode == 0, check.stdout + check.stderr
    # after the storm the replicas answer normally again
    for api in cluster.apis:
        assert _ready(api)
