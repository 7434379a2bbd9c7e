"""Device groups on the Ray executor (issue 18), on a local Ray cluster on CPU: one engine = 2 rank
actors in a STRICT_PACK placement group running guidance rows over gloo.

The group's video equals the one-process render within the tolerance of ``tests/test_parallel.py``;
``ray.kill`` of a rank mid-task ends the group's attempt, the store records exactly one failed
attempt, the retry completes on a new group (new placement group) and the task is charged once.
The profile is the tiny engine with 3 guided steps and the test engine's pause on "slow-fox" prompts
(``tests/engines/faulty.py``), imported by the actors through the job's ``PYTHONPATH``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from reelgen import service
from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.executor.ray import DISPATCHER_NAME, NAMESPACE, RayExecutor, wait_for_engines
from reelgen.executor.raygroup import group_devices
from reelgen.store import ledger
from tests.engines import importable_env
from tests.factories import generate_body, make_account
from tests.test_parallel import MP4_MIN_PSNR_DB, _video
from tests.test_ray import DEADLINE, SLOW, RayRig, _running

PROFILE = "tiny-guided-faults"
PROFILES = f"""
[{PROFILE}]
extends = "ltx-2-tiny"
engine = "tests.engines.faulty:FaultyEngine"
modes.professional.stage1.steps = 3
faults = {{ slow_on_prompt = "{SLOW}", step_delay = 1.0 }}
"""
RANKS = ["reelgen-engine-0", "reelgen-engine-0-rank-1"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayRig]:
    import ray

    tmp = tmp_path_factory.mktemp("raygroups")
    profiles = tmp / "profiles.toml"
    profiles.write_text(PROFILES)
    settings = Settings(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'reelgen.db'}",
        profile=PROFILE,
        profiles_file=profiles,
        secret_key="ray-groups-test-secret",
        executor="ray",
        devices="cpu,cpu",
        parallel="cfg=2",
        ray_actors=1,  # one engine: a group of 2 ranks
        lease_seconds=4.0,
        heartbeat_seconds=0.5,
        shutdown_grace_seconds=5.0,
    )
    ctx = service.Context.from_settings(settings)
    env = {"PYTHONPATH": importable_env(os.environ)["PYTHONPATH"], "REELGEN_COLLECTIVE_TIMEOUT_S": "60"}
    ray.init(
        num_cpus=2,  # exactly one group's bundles: a new group is placed only once the old one is removed
        object_store_memory=80 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        namespace=NAMESPACE,
        runtime_env={"env_vars": env},
    )
    executor = RayExecutor(settings)
    try:
        executor.start()
        ctx.on_submit = executor.notify
        wait_for_engines(executor.dispatcher, 1, timeout=DEADLINE)
        yield RayRig(ray, settings, ctx.db, ctx, executor, make_account(ctx, credits=100_000, name="groups"))
    finally:
        try:
            ray.get(ray.get_actor(DISPATCHER_NAME, namespace=NAMESPACE).shutdown.remote(), timeout=30)
        finally:
            executor.stop()
            ray.shutdown()
            ctx.db.dispose()


def submit(rig: RayRig, prompt: str) -> str:
    body = generate_body(prompt=prompt, duration=3, mode="professional", seed=7)
    task_id: str = service.submit(rig.ctx, rig.owner.id, body)["id"]
    return task_id


def placement(rig: RayRig) -> str:
    engine = rig.dispatcher_status()["engines"]["reelgen-engine-0"]
    assert engine["ranks"] == RANKS
    pg_id: str = engine["placement_group"]
    return pg_id


@pytest.mark.ray
@pytest.mark.slow
def test_a_group_of_two_rank_actors_renders_the_one_process_video(rig: RayRig, tmp_path: Path) -> None:
    from ray.util.placement_group import placement_group_table

    from reelgen.domain import plan
    from reelgen.engines import load_engine
    from reelgen.generation import render
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    table = placement_group_table()[placement(rig)]
    assert table["strategy"] == "STRICT_PACK" and table["state"] == "CREATED"
    assert list(table["bundles"].values()) == [{"CPU": 1.0}, {"CPU": 1.0}]
    for name in RANKS:  # each rank runs in the group's placement group
        actor = rig.ray.get_actor(name, namespace=NAMESPACE)
        assert rig.ray.get(actor.__ray_call__.remote(_placement_of_this_actor)) == placement(rig)

    task_id = submit(rig, "a red fox runs through snow")
    rig.wait("the task to complete", lambda: rig.task(task_id).status.is_terminal)
    row = rig.task(task_id)
    assert row.status is TaskStatus.COMPLETED, row.error_message
    assert (row.attempt, row.failures) == (1, 0)
    assert row.worker_id is not None and row.worker_id.startswith("ray:reelgen-engine-0:")
    assert rig.movement_kinds(task_id) == Counter({"reserve": 1, "capture": 1})

    # the same task rendered in this one process
    profile = get_profile(PROFILE, str(rig.settings.profiles_file))
    job = plan(GenerateInput.model_validate(row.input), profile, seed=row.seed)
    alone = tmp_path / "alone.mp4"
    render(job, load_engine(profile, device="cpu"), alone)
    grouped = tmp_path / "group.mp4"
    with rig.ctx.storage.open(row.result_key or "") as f:
        grouped.write_bytes(f.read())
    a, b = _video(alone), _video(grouped)
    assert a.shape == b.shape
    mse = float(np.mean((a - b) ** 2))
    psnr = 10 * np.log10(255.0**2 / mse) if mse else float("inf")
    assert psnr >= MP4_MIN_PSNR_DB, psnr
    assert rig.db.run(ledger.check) == []


def _placement_of_this_actor(_: object) -> str:
    import ray

    return str(ray.get_runtime_context().get_placement_group_id())


@pytest.mark.ray
@pytest.mark.slow
def test_killing_a_rank_ends_the_group_attempt_and_the_retry_completes_on_a_new_group(rig: RayRig) -> None:
    from ray.util.placement_group import placement_group_table

    before = rig.dispatcher_status()
    old_pg = placement(rig)
    task_id = submit(rig, f"a {SLOW} on two ranks")
    rig.wait("the task to be mid-generation", _running(rig, task_id))
    first = rig.task(task_id)
    assert first.attempt == 1 and first.worker_id is not None and first.worker_id.startswith("ray:reelgen-engine-0:")
    rig.ray.kill(rig.ray.get_actor(RANKS[1], namespace=NAMESPACE), no_restart=True)

    rig.wait_retried_once(task_id, first)
    # the whole group was retired (its placement group removed) and a new one placed
    after = rig.dispatcher_status()
    assert after["deaths"] == before["deaths"] + 1
    assert placement(rig) != old_pg
    assert placement_group_table()[old_pg]["state"] == "REMOVED"
    assert rig.db.run(ledger.check) == []


def test_each_rank_runs_on_its_own_gpu_among_the_groups_gpus() -> None:
    assert group_devices([[], []]) == (["cpu", "cpu"], None)
    # Ray gave rank 0 GPU 10 and rank 1 GPU 2: both see "2,10", rank 0 uses the second
    assert group_devices([["10"], ["2"]]) == (["cuda:1", "cuda:0"], "2,10")
    assert group_devices([["3"], ["1"], ["0"], ["2"]]) == (["cuda:3", "cuda:1", "cuda:0", "cuda:2"], "0,1,2,3")


def test_the_ray_executor_refuses_a_group_it_cannot_form_before_starting(tmp_path: Path) -> None:
    from reelgen.errors import ErrorCode, ReelgenError

    executor = RayExecutor(Settings(data_dir=tmp_path, executor="ray", devices="cpu,cpu", parallel="ring=2"))
    with pytest.raises(ReelgenError) as err:
        executor.start()
    assert err.value.code is ErrorCode.INVALID_SETTINGS
    assert "return_lse" in err.value.message
