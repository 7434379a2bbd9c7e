"""Device groups under the worker and the local executor (issue 18), on CPU with gloo: the executor
forms one group worker from ``devices = cpu,cpu`` and ``parallel = cfg=2``; a rank killed mid-task
ends the group's attempt (no hang), the lease expires, attempt 2 completes and the task is charged once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from reelgen.domain import TaskStatus
from reelgen.executor.local import LocalExecutor
from reelgen.groupworker import GROUP_BROKEN_EXIT
from reelgen.sweeper import sweep_once
from tests.test_worker import Rig, _make_rig, _test_engine_importable, utcnow  # noqa: F401 (autouse fixture)


@pytest.fixture
def group_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = _make_rig(tmp_path, None, devices="cpu,cpu", parallel="cfg=2")
    yield rig
    rig.stop_all()
    rig.db.dispose()


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def slow_profiles(rig: Rig) -> Path:
    """The rig's profile on the test engine, pausing 3 s after each step of a "slow" task."""
    path = rig.logs / "slow.toml"
    path.write_text(
        f'["{rig.settings.profile}"]\nextends = "ltx-2-tiny"\nengine = "tests.engines.faulty:FaultyEngine"\n'
        'faults = { slow_on_prompt = "slow", step_delay = 3.0 }\n'
    )
    return path


def test_the_local_executor_runs_a_task_on_a_group(group_rig: Rig) -> None:
    rig = group_rig
    executor = LocalExecutor(rig.settings)
    executor.start()
    try:
        [leader] = executor.pids()  # one worker for the two devices
        task_id = rig.submit("a fox on two cpus")
        executor.notify()
        rig.wait_task(task_id, "completed", lambda r: r.status.is_terminal)
        rig.assert_completed_once(task_id, attempt=1)
        followers = children_of(leader)
        assert len(followers) >= 1, rig.all_logs()
    finally:
        executor.stop()
    assert executor.pids() == []
    rig.wait("the followers to exit", lambda: not any(Path(f"/proc/{p}").exists() for p in followers))


def test_a_killed_rank_ends_the_attempt_and_the_task_is_retried_and_charged_once(group_rig: Rig) -> None:
    rig = group_rig
    task_id = rig.submit("slow fox")
    g1 = rig.spawn("g1", device="cpu,cpu", profiles_file=slow_profiles(rig))
    rig.wait_task(task_id, "running on the group", lambda r: r.status == TaskStatus.PROCESSING and r.progress > 0)
    followers = children_of(g1.pid)
    rank1 = [p for p in followers if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert rank1, (followers, rig.all_logs())
    os.kill(rank1[0], signal.SIGKILL)
    # rank 0's next collective fails: it ends its own process without recording an outcome (no hang)
    assert rig.wait_exit(g1, timeout=180) == GROUP_BROKEN_EXIT, rig.all_logs()
    row = rig.task(task_id)
    assert (row.status, row.attempt) == (TaskStatus.PROCESSING, 1)
    report = sweep_once(rig.db, rig.settings, now=utcnow() + timedelta(seconds=rig.settings.lease_seconds + 1))
    assert report.requeued == [task_id]
    g2 = rig.spawn("g2", device="cpu,cpu", faults=False)
    row = rig.wait_task(task_id, "completed by attempt 2", lambda r: r.status.is_terminal)
    assert row.worker_id == "g2" and row.failures == 1
    rig.assert_completed_once(task_id, attempt=2)  # reserved once, captured once
    g2.send_signal(signal.SIGTERM)
    assert rig.wait_exit(g2, timeout=60) == 0


@pytest.mark.parametrize(
    ("devices", "parallel", "message"),
    [("cpu,cpu,cpu", "cfg=2", "groups 2 devices; 3 listed"), ("cpu,cpu", "ring=2", "return_lse")],
)
def test_serve_refuses_a_group_it_cannot_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], devices: str, parallel: str, message: str
) -> None:
    from reelgen.cli import main

    args = ["serve", "--data-dir", str(tmp_path / "d"), "--devices", devices, "--parallel", parallel]
    assert main(args) != 0
    assert message in capsys.readouterr().err
