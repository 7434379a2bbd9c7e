"""One task on a device group, in this process's children: ``reelgen generate --local --devices a,b``.

``render_on_group`` spawns one process per device (``reelgen.engines.parallel.run_group``); each
joins the group, loads the profile's engine on its device and shares the transformer's work
(``reelgen.engines.parallel.attach``). Rank 0 renders and writes the MP4 with
``reelgen.generation.render``; the other ranks follow: they generate the same segments in the same
order (the collectives inside each transformer call keep them in step) and write nothing. Every
rank's step callback is ``group_steps``: rank 0's answer is broadcast, so a stop reaches every rank
at the same step boundary.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reelgen.domain import Job
    from reelgen.engines.base import Engine
    from reelgen.engines.parallel import Group, ParallelSpec
    from reelgen.generation import ProgressCallback
    from reelgen.media import MediaInfo
    from reelgen.profiles import Profile


@dataclass
class GroupResult:
    """What rank 0 reports: the MP4's facts and the times (seconds) the group took."""

    info: dict[str, Any]
    load_seconds: float
    generate_seconds: float
    random_weights: bool
    source: str
    split_calls: int
    whole_calls: int
    scheduled_calls: int = 0
    ahead_calls: int = 0


def load_on_group(profile: Profile, group: Group, load_format: str = "auto") -> tuple[Engine, Any]:
    """The profile's engine on this rank's device, its transformer work shared across ``group``."""
    from reelgen.engines import load_engine
    from reelgen.engines.parallel import attach

    engine = load_engine(profile, device=group.device, load_format=load_format)
    return engine, attach(engine, group)


def follow(job: Job, engine: Engine, group: Group) -> None:
    """A rank other than 0: generate every segment as rank 0 does (each carried into later shots), keep nothing."""
    from reelgen.continuity import Carry
    from reelgen.engines.parallel import group_steps

    step = group_steps(group, None)
    carry = Carry(job)  # every rank makes the same clips, so each carries its own into later shots
    for index, segment in enumerate(job.segments):
        carry.keep(index, engine.generate(carry.job_for(index), segment, step))


def lead(job: Job, engine: Engine, group: Group, out: Path, on_progress: ProgressCallback | None = None) -> MediaInfo:
    """Rank 0: render the job to ``out``; each step's go-on is broadcast to the followers."""
    from reelgen.engines.parallel import group_steps
    from reelgen.generation import render

    return render(job, engine, out, group_steps(group, on_progress))


def _rank_main(
    rank: int,
    devices: list[str],
    port: int,
    spec: ParallelSpec,
    profile: Profile,
    job: Job,
    out: str,
    load_format: str,
    report: str,
    show_progress: bool,
) -> None:
    import sys

    from reelgen.engines.parallel import init_group, leave_group

    group = init_group(rank, devices, spec, port)
    try:
        t0 = time.perf_counter()
        engine, split = load_on_group(profile, group, load_format)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if rank != 0:
            follow(job, engine, group)
            return

        def progress(done: int, total: int) -> bool:
            if show_progress:
                print(f"\rdenoising step {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
            return True

        info = lead(job, engine, group, Path(out), progress)
        result = GroupResult(
            info=info.as_dict(),
            load_seconds=round(load_s, 3),
            generate_seconds=round(time.perf_counter() - t0, 3),
            random_weights=engine.random_weights,
            source=str(getattr(engine, "source", "random")),
            split_calls=split.split_calls if split is not None else 0,
            whole_calls=split.whole_calls if split is not None else 0,
            scheduled_calls=split.scheduled_calls if split is not None else 0,
            ahead_calls=split.ahead_calls if split is not None else 0,
        )
        Path(report).write_text(json.dumps(result.__dict__))
    finally:
        leave_group()


def render_on_group(
    profile: Profile,
    job: Job,
    out: Path,
    devices: list[str],
    spec: ParallelSpec,
    load_format: str = "auto",
    show_progress: bool = False,
) -> GroupResult:
    """Render ``job`` to ``out`` on one process per device; rank 0's report."""
    from reelgen.engines.parallel import run_group

    with tempfile.TemporaryDirectory(prefix="reelgen-group-") as tmp:
        report = Path(tmp) / "rank0.json"
        run_group(devices, _rank_main, spec, profile, job, str(out), load_format, str(report), show_progress)
        return GroupResult(**json.loads(report.read_text()))
