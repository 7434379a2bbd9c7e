"""Workers, leases, retries, graceful shutdown and atomic outputs (RELIABILITY 8, 9, 10, 21).

Every test runs real ``python -m reelgen.worker`` subprocesses on the tiny LTX-2 engine against a
real database (a SQLite file in tmp_path; PostgreSQL too where marked), and waits for state by
polling the database with a deadline. Mid-generation moments are made reliable by the test engine
the rig's profile selects (``ltx-2-tiny-faults``, ``tests/engines/faulty.py``): a "slow" prompt
pauses after each denoising step until the attempt is told to stop, a "poison" prompt SIGKILLs the
worker after its first step.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from reelgen.attempt import Worker
from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.engines.base import Engine
from reelgen.errors import ErrorCode
from reelgen.executor.local import LocalExecutor, settings_env
from reelgen.media import probe
from reelgen.storage.local import LocalStorage
from reelgen.store import keys, ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import movements
from reelgen.sweeper import sweep_once
from tests.engines import PLAIN_PROFILES, PROFILES, importable_env
from tests.engines.faulty import Faults, FaultyEngine
from tests.store_fixtures import pg_schema

GRANT = 1000
PRICE = 126  # ltx-2-tiny standard with audio: 42 credits/s x 3 s
DEADLINE = 90.0  # generous: a worker spends ~5 s importing torch on 2 busy cores


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Rig:
    """A database with one funded account, its settings, and the worker processes a test starts."""

    settings: Settings
    db: Database
    logs: Path
    account: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def storage(self) -> LocalStorage:
        return LocalStorage(self.settings.outputs_dir)

    def submit(self, prompt: str = "a fox", **inp: Any) -> str:
        image = "image_urls" in inp
        body = {"prompt": prompt, "duration": 3, **({} if image else {"aspect_ratio": "16:9"}), **inp}
        model = "kling-3-0-image-to-video" if image else "kling-3-0-text-to-video"

        def go(conn: Any) -> str:
            now = utcnow()
            row = tasks.create(
                conn,
                account_id=self.account,
                model=model,
                profile=self.settings.profile,
                input=body,
                prompt=prompt,
                price=PRICE,
                seed=7,
                max_attempts=self.settings.max_attempts,
                now=now,
            )
            ledger.reserve(conn, self.account, row.id, PRICE, now)
            return row.id

        task_id: str = self.db.run(go, immediate=True)
        return task_id

    def spawn(
        self, name: str, *, faults: bool = True, device: str = "cpu", profiles_file: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m reelgen.worker`` on ``device`` with the rig's settings; ``faults=False``:
        the same profile on the plain tiny engine (a healthy worker that runs "slow" tasks at full
        speed); ``profiles_file``: the rig's profile from that file instead."""
        if profiles_file is None and not faults:
            profiles_file = PLAIN_PROFILES
        settings = self.settings.model_copy(update={"profiles_file": profiles_file or self.settings.profiles_file})
        full = settings_env(settings)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reelgen.worker", "--device", device, "--worker-id", name],
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log"))

    def task(self, task_id: str) -> tasks.TaskRow:
        row = self.db.run(lambda conn: tasks.get(conn, task_id))
        assert row is not None
        return row

    def wait(self, what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Poll ``check`` until it holds; fail with the workers' logs at the deadline."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.all_logs()}")
            time.sleep(0.05)

    def wait_task(self, task_id: str, what: str, check: Callable[[tasks.TaskRow], bool]) -> tasks.TaskRow:
        rows: list[tasks.TaskRow] = []

        def probe_row() -> bool:
            rows.append(self.task(task_id))
            return check(rows[-1])

        self.wait(f"task {what}", probe_row)
        return rows[-1]

    def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float = DEADLINE) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker pid {proc.pid} did not exit\n{self.all_logs()}")

    def movement_kinds(self, task_id: str) -> dict[str, int]:
        stmt = select(movements.c.kind, func.count()).where(movements.c.task_id == task_id).group_by(movements.c.kind)
        return {kind: int(n) for kind, n in self.db.run(lambda conn: conn.execute(stmt).all())}

    def assert_invariants(self) -> None:
        assert self.db.run(ledger.check) == []

    def assert_completed_once(self, task_id: str, attempt: int) -> None:
        """Completed by ``attempt``: captured exactly once, file plays 3 s, no other attempt's file."""
        row = self.task(task_id)
        assert row.status == TaskStatus.COMPLETED, (row, self.all_logs())
        assert row.attempt == attempt
        assert row.result_key == f"{task_id}/{attempt}.mp4"
        assert self.movement_kinds(task_id) == {"reserve": 1, "capture": 1}
        path = self.storage.local_path(row.result_key)
        assert path is not None
        info = probe(path)
        assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6
        assert info.has_audio and row.result_has_audio
        assert row.result_duration is not None and abs(row.result_duration - info.duration) < 1e-6
        for other in range(1, attempt):
            assert not self.storage.exists(f"{task_id}/{other}.mp4")
        assert self.scratch_files() == []
        self.assert_invariants()

    def scratch_files(self) -> list[str]:
        return sorted(p.name for p in self.storage.tmp.glob("*")) if self.storage.tmp.exists() else []

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _make_rig(tmp_path: Path, database_url: str | None, **overrides: Any) -> Rig:
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "heartbeat_seconds": 0.2,
        "lease_seconds": 30.0,
        "shutdown_grace_seconds": 2.0,
        "max_attempts": 3,
        "profile": "ltx-2-tiny-faults",
        "profiles_file": PROFILES,
        **overrides,
    }
    settings = Settings(**options)
    db = Database.from_settings(settings)
    db.upgrade()
    logs = tmp_path / "logs"
    logs.mkdir()
    rig = Rig(settings=settings, db=db, logs=logs)

    def fund(conn: Any) -> str:
        account = keys.create_account(conn, "worker tests")
        ledger.grant(conn, account, GRANT, utcnow())
        return account

    rig.account = db.run(fund, immediate=True)
    return rig


@pytest.fixture(autouse=True)
def _test_engine_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes (spawned here or by an executor) import the rig profile's test engine."""
    monkeypatch.setenv("PYTHONPATH", importable_env(os.environ)["PYTHONPATH"])


@pytest.fixture(params=["sqlite", "postgresql"])
def any_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A rig on SQLite and on PostgreSQL (a fresh schema)."""
    if request.param == "sqlite":
        rig = _make_rig(tmp_path, None)
        yield rig
        rig.stop_all()
        rig.db.dispose()
    else:
        with pg_schema() as url:
            rig = _make_rig(tmp_path, url)
            yield rig
            rig.stop_all()
            rig.db.dispose()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A rig on SQLite."""
    rig = _make_rig(tmp_path, None)
    yield rig
    rig.stop_all()
    rig.db.dispose()


def _png_data_uri(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_worker_completes_tasks_and_fails_bad_input_cleanly(any_rig: Rig) -> None:
    rig = any_rig
    t2v = rig.submit("a fox in the snow")
    i2v = rig.submit("the ball rolls away", image_urls=[_png_data_uri(300, 200)])
    refused = rig.submit("a private picture", image_urls=["http://127.0.0.1:1/secret.png"])
    proc = rig.spawn("w1")
    rig.wait_task(t2v, "t2v completed", lambda r: r.status == TaskStatus.COMPLETED)
    rig.wait_task(i2v, "i2v completed", lambda r: r.status == TaskStatus.COMPLETED)
    row = rig.wait_task(refused, "refused image failed", lambda r: r.status.is_terminal)

    rig.assert_completed_once(t2v, attempt=1)
    rig.assert_completed_once(i2v, attempt=1)
    assert row.status == TaskStatus.FAILED
    assert row.error_code == ErrorCode.IMAGE_FETCH_FAILED
    assert row.error_message and "Traceback" not in row.error_message and "/" not in row.error_message
    assert row.result_key is None
    assert rig.movement_kinds(refused) == {"reserve": 1, "release": 1}
    balance = rig.db.run(lambda conn: ledger.balance(conn, rig.account))
    assert (balance.available, balance.reserved, balance.captured) == (GRANT - 2 * PRICE, 0, 2 * PRICE)
    assert "output is noise" in rig.log("w1")

    proc.send_signal(signal.SIGTERM)  # idle: drains at once
    assert rig.wait_exit(proc, timeout=10) == 0


def test_killed_worker_is_recovered_on_a_fresh_worker(any_rig: Rig) -> None:
    """RELIABILITY 8: SIGKILL mid-generation, lease expiry, one rescuer pass, attempt 2 completes once."""
    rig = any_rig
    task_id = rig.submit("slow fox")
    w1 = rig.spawn("w1")
    rig.wait_task(task_id, "running with a heartbeat", lambda r: r.status == TaskStatus.PROCESSING and r.progress > 0)
    w2 = rig.spawn("w2", faults=False)  # loads while w1 is stuck mid-generation; nothing else to claim
    os.kill(w1.pid, signal.SIGKILL)
    assert rig.wait_exit(w1) == -signal.SIGKILL
    row = rig.task(task_id)
    assert (row.status, row.attempt, row.worker_id) == (TaskStatus.PROCESSING, 1, "w1")

    assert sweep_once(rig.db, rig.settings, now=utcnow()).requeued == []  # the lease still holds
    report = sweep_once(rig.db, rig.settings, now=utcnow() + timedelta(seconds=rig.settings.lease_seconds + 1))
    assert report.requeued == [task_id]
    row = rig.wait_task(task_id, "completed by attempt 2", lambda r: r.status.is_terminal)
    assert row.worker_id == "w2" and row.failures == 1
    rig.assert_completed_once(task_id, attempt=2)
    w2.send_signal(signal.SIGTERM)
    assert rig.wait_exit(w2, timeout=10) == 0


def test_poison_task_fails_after_max_attempts(tmp_path: Path) -> None:
    """RELIABILITY 9: the test engine kills every attempt of a poison prompt; the executor's
    supervisor restarts the worker and its sweeper requeues, until the third expired lease fails the task and releases
    its hold. There is no fourth attempt."""
    rig = _make_rig(tmp_path, None, lease_seconds=1.0)
    executor = LocalExecutor(rig.settings)
    try:
        task_id = rig.submit("a poison pill")
        executor.start()
        row = rig.wait_task(task_id, "failed", lambda r: r.status.is_terminal)
        assert row.status == TaskStatus.FAILED
        assert row.error_code == ErrorCode.GENERATION_FAILED
        assert (row.attempt, row.failures) == (3, 3)
        assert rig.movement_kinds(task_id) == {"reserve": 1, "release": 1}
        rig.assert_invariants()
        # the worker is restarted once more and finds nothing to claim
        rig.wait("a fresh worker", lambda: len(executor.pids()) == 1)
    finally:
        executor.stop()
    assert rig.task(task_id).attempt == 3
    assert executor.pids() == []


def test_sigterm_hands_back_within_grace_and_a_restarted_worker_finishes(rig: Rig) -> None:
    """RELIABILITY 10: SIGTERM with a 2 s grace mid-task; exit 0 within ~3 s; task queued, no lease."""
    task_id = rig.submit("slow fox")
    w1 = rig.spawn("w1")
    rig.wait_task(task_id, "running with a heartbeat", lambda r: r.status == TaskStatus.PROCESSING and r.progress > 0)
    w2 = rig.spawn("w2", faults=False)
    started = time.monotonic()
    w1.send_signal(signal.SIGTERM)
    assert rig.wait_exit(w1, timeout=15) == 0
    assert time.monotonic() - started < 3.5
    row = rig.task(task_id)
    assert row.status in (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.COMPLETED)
    if row.status == TaskStatus.PROCESSING:  # w2 already took it back up
        assert row.worker_id == "w2"
    if row.attempt == 1:
        assert row.status == TaskStatus.PENDING and row.lease_expires_at is None and row.worker_id is None
    assert row.failures == 0  # a hand-back is not a failure
    assert "handed back" in rig.log("w1")
    rig.wait_task(task_id, "completed by w2", lambda r: r.status.is_terminal)
    rig.assert_completed_once(task_id, attempt=2)
    w2.send_signal(signal.SIGTERM)
    assert rig.wait_exit(w2, timeout=10) == 0


def test_second_sigterm_hands_back_at_once(tmp_path: Path) -> None:
    """A second SIGTERM does not wait out a long grace period, and still hands the task back."""
    rig = _make_rig(tmp_path, None, shutdown_grace_seconds=60.0)
    try:
        task_id = rig.submit("slow fox")
        w1 = rig.spawn("w1")
        rig.wait_task(task_id, "running", lambda r: r.status == TaskStatus.PROCESSING and r.progress > 0)
        started = time.monotonic()
        w1.send_signal(signal.SIGTERM)
        rig.wait("the first signal to be seen", lambda: "draining" in rig.log("w1"))
        w1.send_signal(signal.SIGTERM)
        assert rig.wait_exit(w1, timeout=15) == 0
        assert time.monotonic() - started < 10
        row = rig.task(task_id)
        assert (row.status, row.attempt, row.worker_id, row.lease_expires_at) == (TaskStatus.PENDING, 1, None, None)
        assert rig.movement_kinds(task_id) == {"reserve": 1}
        rig.assert_invariants()
    finally:
        rig.stop_all()
        rig.db.dispose()


@pytest.fixture
def in_process(rig: Rig, tiny_engine: Engine) -> Iterator[Callable[..., Worker]]:
    """Workers run in this process on the session's tiny engine, driven one attempt at a time."""
    made: list[Worker] = []

    def make(worker_id: str, faults: Faults | None = None, **overrides: Any) -> Worker:
        worker = Worker(rig.settings.model_copy(update=overrides), device="cpu", worker_id=worker_id)
        worker.load(engine=tiny_engine if faults is None else FaultyEngine(tiny_engine, faults))
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.db.dispose()


def _claim(rig: Rig, worker_id: str) -> tasks.TaskRow:
    row = rig.db.run(
        lambda conn: tasks.claim(conn, worker_id=worker_id, lease_seconds=rig.settings.lease_seconds, now=utcnow()),
        immediate=True,
    )
    assert row is not None
    return row


def _expire_leases(rig: Rig) -> list[str]:
    later = utcnow() + timedelta(seconds=rig.settings.lease_seconds + 1)
    return sweep_once(rig.db, rig.settings, now=later).requeued


def test_superseded_attempt_output_is_deleted_not_served(
    rig: Rig, in_process: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """RELIABILITY 21 / 4: an attempt that renders to the end after losing its claim stores its file,
    is refused at completion, and deletes the file; only the newer attempt's output is published."""
    caplog.set_level(logging.INFO, logger="reelgen.worker")
    task_id = rig.submit("a fox")
    first = _claim(rig, "w1")
    assert _expire_leases(rig) == [task_id]
    second = _claim(rig, "w2")
    assert (first.attempt, second.attempt) == (1, 2)

    # no heartbeat during the render: attempt 1 only learns it lost when completing is refused
    in_process("w1", heartbeat_seconds=600.0).run_attempt(first)
    assert "attempt 1: a newer attempt owns the task; output deleted" in caplog.text
    assert not rig.storage.exists(f"{task_id}/1.mp4")
    assert rig.scratch_files() == []
    row = rig.task(task_id)
    assert (row.status, row.attempt, row.result_key) == (TaskStatus.PROCESSING, 2, None)
    assert rig.movement_kinds(task_id) == {"reserve": 1}

    in_process("w2").run_attempt(second)
    rig.assert_completed_once(task_id, attempt=2)


def test_a_storage_error_deleting_a_superseded_output_does_not_cost_the_attempt(
    rig: Rig, in_process: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting an earlier attempt's output fails (here: the key is a directory, so unlink raises):
    the new attempt logs it and still runs to completion, instead of dying holding its claim."""
    caplog.set_level(logging.INFO, logger="reelgen.worker")
    task_id = rig.submit("a fox")
    _claim(rig, "w1")
    assert _expire_leases(rig) == [task_id]
    second = _claim(rig, "w2")
    stuck = rig.storage.local_path(f"{task_id}/1.mp4")
    assert stuck is not None
    stuck.mkdir(parents=True)
    (stuck / "blocker").write_bytes(b"x")

    in_process("w2").run_attempt(second)
    assert "could not delete the output of attempt 1 (IsADirectoryError); continuing" in caplog.text
    row = rig.task(task_id)
    assert (row.status, row.attempt, row.result_key) == (TaskStatus.COMPLETED, 2, f"{task_id}/2.mp4")
    assert rig.movement_kinds(task_id) == {"reserve": 1, "capture": 1}
    assert rig.scratch_files() == []
    rig.assert_invariants()


def test_lost_claim_stops_mid_render_and_leaves_no_file(
    rig: Rig, in_process: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """RELIABILITY 21: a refused heartbeat stops the render at the next step; nothing is stored."""
    caplog.set_level(logging.INFO, logger="reelgen.worker")
    task_id = rig.submit("slow fox")
    worker = in_process("w1", faults=Faults(slow_on_prompt="slow", step_delay=60.0), heartbeat_seconds=0.1)
    row = _claim(rig, "w1")
    runner = threading.Thread(target=worker.run_attempt, args=(row,))
    runner.start()
    try:
        rig.wait_task(task_id, "mid-render", lambda r: r.progress > 0)
        assert _expire_leases(rig) == [task_id]
    finally:
        runner.join(timeout=DEADLINE)
    assert not runner.is_alive()
    assert "stopped after losing its claim; output discarded" in caplog.text
    assert not rig.storage.exists(f"{task_id}/1.mp4")
    assert rig.scratch_files() == []
    row = rig.task(task_id)
    assert (row.status, row.attempt, row.failures) == (TaskStatus.PENDING, 1, 1)
    assert rig.movement_kinds(task_id) == {"reserve": 1}
    rig.assert_invariants()


def test_local_executor_runs_tasks_and_restarts_a_dead_worker(rig: Rig) -> None:
    executor = LocalExecutor(rig.settings)
    executor.start()
    try:
        ids = [rig.submit(f"fox number {i}") for i in range(3)]
        executor.notify()
        for task_id in ids:
            rig.wait_task(task_id, "completed", lambda r: r.status.is_terminal)
            rig.assert_completed_once(task_id, attempt=1)
        [pid] = executor.pids()
        os.kill(pid, signal.SIGKILL)
        # (the poison-task test shows restarted workers claiming and running tasks)
        rig.wait("the supervisor to restart the worker", lambda: executor.pids() not in ([], [pid]))
        [restarted] = executor.pids()
    finally:
        executor.stop()
    assert executor.pids() == []
    for child in (pid, restarted):  # every child was reaped: no zombies
        with pytest.raises(ChildProcessError):
            os.waitpid(child, os.WNOHANG)


def test_settings_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(
        data_dir=Path("rel"), devices="cpu", lease_seconds=7.5, allow_private_image_hosts=True, max_attempts=5
    )
    monkeypatch.setenv("REELGEN_WEIGHTS", "/inherited/should/not/leak")
    env = settings_env(settings)
    assert "REELGEN_WEIGHTS" not in env
    assert env["REELGEN_DATA_DIR"] == str(tmp_path / "rel")
    for name in ("REELGEN_DATA_DIR", "REELGEN_LEASE_SECONDS", "REELGEN_ALLOW_PRIVATE_IMAGE_HOSTS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("REELGEN_MAX_ATTEMPTS", env["REELGEN_MAX_ATTEMPTS"])
    monkeypatch.delenv("REELGEN_WEIGHTS")
    rebuilt = Settings()
    assert rebuilt.data_dir == tmp_path / "rel"
    assert (rebuilt.lease_seconds, rebuilt.allow_private_image_hosts, rebuilt.max_attempts) == (7.5, True, 5)
    assert rebuilt.weights is None


def test_the_attempt_holds_no_signal_handling_or_process_exit() -> None:
    """Signals, the parent pipe, the grace period and the exit belong to the process shell
    (``reelgen.worker``); the attempt, which the Ray engine actor also runs, never touches them."""
    import ast
    import inspect

    import reelgen.attempt

    tree = ast.parse(inspect.getsource(reelgen.attempt))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    called = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not imported & {"os", "signal", "sys"}
    assert not called & {"_exit", "kill", "sigwait", "pthread_sigmask"}
