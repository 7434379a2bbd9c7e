"""The Ray executor on a local Ray cluster started by the test (CPU, tiny profile, 2 engine actors).

RELIABILITY 12: the store is the source of truth. Engine actors run the real worker loop on the
tiny LTX-2 engine against a real SQLite store; the test kills actors with ``ray.kill`` and checks
the store's attempt counter and the ledger. The cluster is bounded (2 CPUs, a small object store,
no dashboard) and shared by the module's tests, which take about 2-3 minutes in all on 2 cores.
Mid-generation moments come from the test engine the profile selects (``ltx-2-tiny-faults-brief``,
``tests/engines/faulty.py``: a 1.5 s pause after each step of a "slow-fox" prompt); the actors
import it through the job's runtime environment (``PYTHONPATH``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reelgen import service
from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.executor.ray import DISPATCHER_NAME, NAMESPACE, RayExecutor, wait_for_engines
from reelgen.store import ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import movements
from tests.engines import PROFILES, importable_env
from tests.factories import Account, generate_body, make_account

pytestmark = pytest.mark.ray

ACTORS = 2
PRICE = 126
SLOW = "slow-fox"
DEADLINE = 400.0  # generous: importing torch in each actor takes ~10 s on a quiet 2-core machine, minutes on a busy one


@dataclass
class RayRig:
    ray: Any
    settings: Settings
    db: Database
    ctx: service.Context
    executor: RayExecutor
    owner: Account

    def submit(self, prompt: str = "a red fox runs through snow") -> str:
        task_id: str = service.submit(self.ctx, self.owner.id, generate_body(prompt=prompt, duration=3))["id"]
        return task_id

    def task(self, task_id: str) -> tasks.TaskRow:
        row = self.db.run(lambda conn: tasks.get(conn, task_id))
        assert row is not None
        return row

    def wait(self, what: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.1)

    def dispatcher_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ray.get(self.executor.dispatcher.status.remote())
        return status

    def movement_kinds(self, task_id: str) -> Counter[str]:
        stmt = sa.select(movements.c.kind).where(movements.c.task_id == task_id)
        return Counter(self.db.run(lambda conn: conn.execute(stmt).scalars().all()))

    def wait_retried_once(self, task_id: str, first: tasks.TaskRow) -> None:
        """The task, whose ``first`` attempt lost its engine, ends completed by exactly one retry on
        another engine, charged once, its output the second attempt's."""
        self.wait("the task to end", lambda: self.task(task_id).status.is_terminal)
        done = self.task(task_id)
        assert done.status is TaskStatus.COMPLETED, done.error_message
        assert (done.attempt, done.failures) == (2, 1), "exactly one failed attempt, then one retry"
        assert done.worker_id != first.worker_id
        assert self.movement_kinds(task_id) == Counter({"reserve": 1, "capture": 1}), "charged once"
        assert done.result_key == f"{task_id}/2.mp4" and self.ctx.storage.exists(done.result_key)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayRig]:
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    settings = Settings(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'reelgen.db'}",
        profile="ltx-2-tiny-faults-brief",
        profiles_file=PROFILES,
        secret_key="ray-test-secret",
        executor="ray",
        ray_actors=ACTORS,
        lease_seconds=4.0,
        heartbeat_seconds=0.5,
        shutdown_grace_seconds=5.0,
    )
    ctx = service.Context.from_settings(settings)  # migrates the database
    db = ctx.db
    ray.init(
        num_cpus=ACTORS,
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        namespace=NAMESPACE,
        runtime_env={"env_vars": {"PYTHONPATH": importable_env(os.environ)["PYTHONPATH"]}},
    )
    executor = RayExecutor(settings)
    try:
        executor.start()
        ctx.on_submit = executor.notify
        wait_for_engines(executor.dispatcher, ACTORS, timeout=DEADLINE)
        yield RayRig(ray, settings, db, ctx, executor, make_account(ctx, credits=100_000, name="ray"))
    finally:
        try:
            # a test may have killed the dispatcher for good; one that is there must shut down cleanly
            # (an error here is a failure of the module, not noise to swallow)
            named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
            if DISPATCHER_NAME in named:
                dispatcher = ray.get_actor(DISPATCHER_NAME, namespace=NAMESPACE)
                ray.get(dispatcher.shutdown.remote(), timeout=30)
        finally:
            executor.stop()
            ray.shutdown()
            db.dispose()


def test_two_engine_actors_complete_20_concurrent_tasks(rig: RayRig) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(lambda _: rig.submit(), range(20)))
    rig.wait("20 tasks to complete", lambda: all(rig.task(t).status.is_terminal for t in ids))
    rows = [rig.task(t) for t in ids]
    assert {r.status for r in rows} == {TaskStatus.COMPLETED}, [(r.status, r.error_message) for r in rows]
    assert all(r.attempt == 1 and r.failures == 0 for r in rows)
    workers = {r.worker_id for r in rows}
    assert len(workers) == ACTORS and all(w and w.startswith("ray:reelgen-engine-") for w in workers), workers
    assert all(rig.movement_kinds(t) == Counter({"reserve": 1, "capture": 1}) for t in ids)
    assert all(rig.ctx.storage.exists(r.result_key or "") for r in rows)
    assert rig.db.run(ledger.check) == []


def _running(rig: RayRig, task_id: str) -> Callable[[], bool]:
    def check() -> bool:
        row = rig.task(task_id)
        return row.status is TaskStatus.PROCESSING and row.progress > 0

    return check


def test_killing_an_engine_actor_fails_one_attempt_and_the_retry_completes(rig: RayRig) -> None:
    deaths_before = rig.dispatcher_status()["deaths"]
    task_id = rig.submit(prompt=f"a {SLOW} in the snow")
    rig.wait("the task to be mid-generation", _running(rig, task_id))
    first = rig.task(task_id)
    assert first.attempt == 1 and first.worker_id is not None
    actor_name = first.worker_id.split(":")[1]
    rig.ray.kill(rig.ray.get_actor(actor_name, namespace=NAMESPACE), no_restart=True)

    rig.wait_retried_once(task_id, first)
    # the dispatcher noticed the death and brought the pool back to full strength
    rig.wait("a replacement engine actor", lambda: len(rig.dispatcher_status()["workers"]) == ACTORS)
    assert rig.dispatcher_status()["deaths"] == deaths_before + 1
    assert rig.db.run(ledger.check) == []


def test_killing_and_restarting_the_dispatcher_mid_task_completes_the_task_once(rig: RayRig) -> None:
    workers_before = rig.dispatcher_status()["workers"]
    task_id = rig.submit(prompt=f"another {SLOW}")
    rig.wait("the task to be mid-generation", _running(rig, task_id))
    rig.ray.kill(rig.ray.get_actor(DISPATCHER_NAME, namespace=NAMESPACE), no_restart=True)
    rig.wait(
        "the dispatcher to be gone",
        lambda: DISPATCHER_NAME not in {a["name"] for a in rig.ray.util.list_named_actors(all_namespaces=True)},
    )

    # an API replica starting again makes a new dispatcher, which adopts the running engine actors
    rig.executor.start()
    rig.wait("the task to end", lambda: rig.task(task_id).status.is_terminal)
    done = rig.task(task_id)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert (done.attempt, done.failures) == (1, 0), "the generation was never interrupted"
    assert rig.movement_kinds(task_id) == Counter({"reserve": 1, "capture": 1})
    rig.wait("the new dispatcher to see both engines", lambda: len(rig.dispatcher_status()["workers"]) == ACTORS)
    assert rig.dispatcher_status()["workers"] == workers_before, "the same engine actors, adopted"
    assert rig.db.run(ledger.check) == []


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from reelgen.errors import ErrorCode, ReelgenError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ReelgenError) as err:
        RayExecutor(Settings(data_dir=tmp_path, executor="ray")).start()
    assert err.value.code is ErrorCode.INVALID_SETTINGS
    assert "pip install 'reelgen[ray]'" in err.value.message
