"""A worker on a device group: ``python -m reelgen.worker --device cpu,cpu`` (or ``cuda:0,cuda:1``).

The process the executor starts is rank 0: it starts one follower process per further device
(``torch.multiprocessing``, spawned), joins the group (``reelgen.engines.parallel``) and runs the
ordinary ``reelgen.attempt.Worker`` (claims, heartbeats, writes the output, records the outcome)
on a ``GroupLeader`` engine. Before each segment the leader sends the job and the segment's index
to the followers over a control group (gloo, no timeout while idle); every rank then generates it,
the transformer's work shared (``REELGEN_PARALLEL``, else the profile's ``parallel``, else
``cfg`` = the number of devices). The step callback is ``group_steps``: rank 0's answer (go on, or
stop for a cancel, a lost claim or a shutdown) is broadcast, so every rank stops at the same step.

Failure: a rank that dies breaks the group's next collective (a closed connection, or
``REELGEN_COLLECTIVE_TIMEOUT_S``). The leader then ends its own process without recording an
outcome, so the task's lease expires and the sweeper retries it as a new attempt (the store's
attempt counter stays the only retry budget; the task is charged once, on completion) and the
executor restarts the group. Followers exit when the leader is gone (their control channel closes).

Both executors use these pieces: the local executor's worker process (``start_followers`` spawns the
followers, ``GroupProcesses.load_leader``) and the Ray executor's rank actors
(``reelgen.executor.raygroup``: one actor per rank in a placement group, each calling
``join_as_leader`` or ``follow_leader`` with the dispatcher's settings). ``group_size`` says how many
devices one group takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Cancelled, Clip, StepCallback
from reelgen.errors import ReelgenError

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.domain import Job, Segment
    from reelgen.engines.base import Engine
    from reelgen.engines.parallel import Group, ParallelSpec

log = logging.getLogger("reelgen.worker")

#: the exit status of a leader whose group broke mid-task (the executor restarts it)
GROUP_BROKEN_EXIT = 3
#: how long the control channel waits for the next task (idle followers must not time out)
CONTROL_TIMEOUT = timedelta(days=365)


def group_size(settings: Settings) -> int:
    """How many devices one engine takes: the world of ``settings.parallel`` (1 without it); a spec
    this build cannot run (sequence parallelism for LTX-2) is refused here, before any process starts."""
    if not settings.parallel:
        return 1
    from reelgen.engines.parallel import ParallelSpec, check_spec

    spec = ParallelSpec.parse(settings.parallel)
    check_spec(spec)
    return spec.world


def group_spec(settings: Settings, devices: list[str]) -> ParallelSpec:
    from reelgen.engines.parallel import ParallelSpec
    from reelgen.profiles import get_profile

    profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
    return ParallelSpec.of(profile, settings.parallel, devices)


def _control(group: Group) -> Any:
    import torch.distributed as dist

    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def _send(control: Any, message: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    dist.broadcast_object_list([message], src=0, group=control)


def _receive(control: Any) -> tuple[Any, ...]:
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=control)
    return tuple(box[0])


class GroupLeader:
    """Rank 0's engine: the followers are told each segment, then every rank generates it."""

    def __init__(self, engine: Engine, group: Group, control: Any) -> None:
        self.engine, self.group, self.control = engine, group, control
        self.random_weights = engine.random_weights

    def __getattr__(self, name: str) -> Any:  # source, video_encoder, device ... of the wrapped engine
        return getattr(self.engine, name)

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        from reelgen.engines.parallel import group_steps

        try:
            _send(self.control, ("run", job, job.segments.index(segment)))
            return self.engine.generate(job, segment, group_steps(self.group, on_step))
        except (Cancelled, ReelgenError):
            raise  # every rank saw the same stop or the same refusal: the group is still in step
        except Exception:
            # a collective failed (a rank died or timed out) or a rank failed alone: the ranks are out
            # of step. No outcome is recorded: the lease expires and the task is retried.
            log.exception("the device group broke mid-task; ending this worker so the task is retried")
            from reelgen.worker import _exit

            _exit(GROUP_BROKEN_EXIT)
            raise  # not reached

    def stop_followers(self) -> None:
        try:
            _send(self.control, ("stop",))
        except Exception as exc:  # the followers are gone already
            log.warning("could not tell the followers to stop (%s)", type(exc).__name__)

    def close(self) -> None:
        """Tell the followers to stop, then leave the group (after the worker's loop has ended)."""
        from reelgen.engines.parallel import leave_group

        self.stop_followers()
        leave_group()


def follow_leader(settings: Settings, rank: int, devices: list[str], port: int, spec: ParallelSpec) -> None:
    """Rank ``rank`` (> 0): join, load, then generate what the leader sends until it says stop. Raises
    when the leader is gone (its control channel closes) or the group broke mid-segment."""
    from reelgen.devicegroup import load_on_group
    from reelgen.engines.parallel import group_steps, init_group, leave_group
    from reelgen.profiles import get_profile

    group = init_group(rank, devices, spec, port)
    control = _control(group)
    profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
    engine, _ = load_on_group(profile, group, settings.load_format)
    step = group_steps(group, None)
    while True:
        message = _receive(control)
        if message[0] == "stop":
            break
        _, job, segment = message
        try:
            engine.generate(job, job.segments[segment], step)
        except (Cancelled, ReelgenError):
            continue  # rank 0 saw the same
    leave_group()


def join_as_leader(settings: Settings, devices: list[str], spec: ParallelSpec, port: int) -> GroupLeader:
    """Join the group as rank 0 and load the engine (the other ranks join at the same time)."""
    from reelgen.devicegroup import load_on_group
    from reelgen.engines.parallel import init_group
    from reelgen.profiles import get_profile

    group = init_group(0, devices, spec, port)
    control = _control(group)
    profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
    engine, _ = load_on_group(profile, group, settings.load_format)
    return GroupLeader(engine, group, control)


def _follower(index: int, devices: list[str], port: int, spec: ParallelSpec) -> None:
    """A spawned follower process (``start_followers``): rank ``index + 1``, settings from ``REELGEN_*``."""
    from reelgen.config import Settings

    follow_leader(Settings(), index + 1, devices, port, spec)


@dataclass
class GroupProcesses:
    """The followers of this leader and the leader's own place in the group."""

    devices: list[str]
    spec: ParallelSpec
    port: int
    context: Any = None
    leader: GroupLeader | None = field(default=None)

    def load_leader(self, settings: Settings) -> GroupLeader:
        """Join the group as rank 0 and load the engine (call after ``start_followers``)."""
        self.leader = join_as_leader(settings, self.devices, self.spec, self.port)
        return self.leader

    def follower_pids(self) -> list[int]:
        return [int(p.pid) for p in self.context.processes] if self.context is not None else []

    def stop(self) -> None:
        """Tell the followers to stop and wait for them (they also exit on their own when rank 0 is gone)."""
        from reelgen.engines.parallel import leave_group

        if self.leader is not None:
            self.leader.close()
        else:
            leave_group()
        if self.context is not None:
            for p in self.context.processes:
                p.join(30)


def start_followers(device: str, settings: Settings) -> GroupProcesses:
    """Spawn ranks 1..N-1 of the group ``device`` (a comma list); they wait for rank 0 to join."""
    from torch.multiprocessing.spawn import start_processes

    from reelgen.engines.parallel import free_port, parse_devices

    devices = parse_devices(device)
    spec = group_spec(settings, devices)
    port = free_port()
    context = start_processes(  # type: ignore[no-untyped-call]
        _follower, args=(devices, port, spec), nprocs=len(devices) - 1, join=False, start_method="spawn"
    )
    log.info("device group %s (%s): followers %s", device, spec.as_text(), [int(p.pid) for p in context.processes])
    return GroupProcesses(devices=devices, spec=spec, port=port, context=context)
