"""One generation on several devices: guidance rows split across ranks, the sequence through diffusers.

A device group is ``world = cfg * ring * ulysses`` processes, one per listed device (``cpu`` may be
listed several times: one process each). Every rank loads the same engine and runs the same,
unmodified diffusers pipeline with the same seeds, so every rank holds the same latents at every
step; only the transformer's work is shared out:

* **guidance rows** (``cfg``): ``reelgen.engines.rows.GuidanceSplit`` wraps the transformer's
  ``forward``. A call with ``B`` rows (classifier-free guidance batches the unconditional and
  conditional rows: ``B = 2``) runs rows ``[rank * B / cfg, (rank + 1) * B / cfg)`` on each rank of
  the guidance group and the outputs are ``all_gather``-ed (gloo, NCCL) before the pipeline's
  guidance combination sees them; with ``cfg = 2`` the one-row STG and modality calls are scheduled
  ahead on rank 1 (see ``GuidanceSplit``). Unguided stages run whole on every rank.
* **sequence** (``ulysses``): diffusers' context parallelism (``ContextParallelConfig``, its
  templated Ulysses attention and split hooks) on the ``ring x ulysses`` sub-mesh, with our plan
  for LTX-2 and the fixes diffusers 0.42 lacks (``reelgen.engines.sequence``). ``ring`` is refused
  (``SEQUENCE_PARALLEL_BLOCKERS``). With ``cfg`` too, ``GuidanceSplit`` wraps outside: the rows
  are split first, then each row's sequence across the Ulysses peers (same guidance index).

The mesh is ``(cfg, ring, ulysses)``: rank ``r`` has guidance index ``r // (ring * ulysses)``; the
ranks with the same sequence index form one guidance group. ``run_group`` spawns the processes
(``torch.multiprocessing``, a free TCP port on 127.0.0.1) and ``group_steps`` makes every rank stop
at the same step when rank 0's progress callback asks to stop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import StepCallback
from reelgen.engines.rows import GuidanceSplit, row_slice
from reelgen.errors import ErrorCode, ReelgenError

__all__ = ["Group", "GuidanceSplit", "ParallelSpec", "row_slice"]

if TYPE_CHECKING:
    from reelgen.profiles import Profile

MODES = ("cfg", "ulysses", "ring")


@dataclass(frozen=True)
class ParallelSpec:
    """How one task is shared across a device group: ``cfg * ring * ulysses`` ranks."""

    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses * self.ring

    @property
    def sequence(self) -> int:
        return self.ulysses * self.ring

    def as_text(self) -> str:
        return f"cfg={self.cfg},ulysses={self.ulysses},ring={self.ring}"

    @classmethod
    def parse(cls, text: str | dict[str, Any] | None) -> ParallelSpec:
        """``cfg=2,ulysses=2`` (the ``--parallel`` flag) or ``{cfg = 2, ulysses = 1}`` (a profile's ``parallel``)."""
        if text is None or text == "":
            return cls()
        raw: dict[str, Any]
        if isinstance(text, dict):
            raw = dict(text)
        else:
            raw = {}
            for part in str(text).split(","):
                key, sep, value = part.strip().partition("=")
                if not sep:
                    raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"--parallel {text!r}: write it as cfg=2,ulysses=1")
                raw[key.strip()] = value.strip()
        unknown = sorted(set(raw) - set(MODES))
        if unknown:
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS, f"parallel {text!r}: unknown {', '.join(unknown)} (use {', '.join(MODES)})"
            )
        degrees: dict[str, int] = {}
        for key, value in raw.items():
            try:
                degrees[key] = int(value)
            except (TypeError, ValueError):
                raise ReelgenError(
                    ErrorCode.INVALID_SETTINGS, f"parallel {key}={value!r}: not a whole number"
                ) from None
            if degrees[key] < 1:
                raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"parallel {key}={value}: must be at least 1")
        return cls(**degrees)

    @classmethod
    def of(cls, profile: Profile, flag: str | None, devices: list[str]) -> ParallelSpec:
        """The flag, else the profile's ``parallel`` table, else every listed device on guidance rows;
        checked against the number of devices."""
        spec = cls.parse(flag) if flag else cls.parse(profile.extra.get("parallel"))
        if not flag and "parallel" not in profile.extra and len(devices) > 1:
            spec = cls(cfg=len(devices))
        check_spec(spec)
        if spec.world != len(devices):
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS,
                f"parallel {spec.as_text()} needs {spec.world} devices; {len(devices)} listed ({','.join(devices)})",
            )
        return spec


def parse_devices(text: str | None) -> list[str]:
    """``cpu``, ``cuda:0,cuda:1`` or ``cpu,cpu`` → the list of devices, one process each."""
    devices = [d.strip() for d in (text or "").split(",") if d.strip()]
    for d in devices:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"device {d!r}: use cpu or cuda:N")
    cuda = [d for d in devices if d != "cpu"]
    if len(set(cuda)) != len(cuda):
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"devices {text!r}: a GPU may be listed once")
    if cuda and len(cuda) != len(devices):
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"devices {text!r}: a group is all cpu or all cuda")
    return devices


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Group:
    """This process's place in a device group and the collectives' sub-groups."""

    rank: int
    spec: ParallelSpec
    device: str
    mesh: Any  # torch.distributed.device_mesh.DeviceMesh with dims ("cfg", "ring", "ulysses")
    #: the transformer's ``reelgen.engines.sequence.SequenceSplit`` once ``attach`` enabled Ulysses
    sequence_split: Any = None

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.spec.sequence

    @property
    def cfg_group(self) -> Any:
        return self.mesh.get_group("cfg")

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's ``value`` on every rank (a collective: every rank must call it)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if value else 0], dtype=torch.int64, device=self._comm_device())
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _comm_device(self) -> str:
        return self.device if self.device.startswith("cuda") else "cpu"


def collective_timeout() -> float:
    """How long a rank waits in a collective for the others before the group's attempt fails
    (``REELGEN_COLLECTIVE_TIMEOUT_S``, default 120 s): a dead rank cannot hang the group."""
    return float(os.environ.get("REELGEN_COLLECTIVE_TIMEOUT_S", "120"))


def init_group(rank: int, devices: list[str], spec: ParallelSpec, port: int) -> Group:
    """Join the group (gloo on CPU, NCCL on CUDA) over 127.0.0.1:``port`` and build its mesh."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    device = devices[rank]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    else:  # the ranks share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=len(devices),
        timeout=timedelta(seconds=collective_timeout()),
    )
    mesh = init_device_mesh(
        "cuda" if cuda else "cpu",
        (spec.cfg, spec.ring, spec.ulysses),
        mesh_dim_names=("cfg", "ring", "ulysses"),
    )
    return Group(rank=rank, spec=spec, device=device, mesh=mesh)


#: why a sequence mode cannot run LTX-2 here (re-checked with diffusers 0.42.1 and torch 2.13)
SEQUENCE_PARALLEL_BLOCKERS = {
    "ring": (
        "diffusers' ring attention merges the partial attentions by their log-sum-exp, which only its CUDA "
        "backends return (flash, sage, _native_cudnn, _native_flash): its native (SDPA) backend, the only "
        "context-parallel one on CPU, refuses return_lse=True; and on any backend it applies each rank's own "
        "key-mask shard to every rotated key chunk, so LTX-2's prompt masks would be misapplied "
        "(gloo has what ring's allgather rotation needs: all_gather)"
    ),
}


def enable_sequence_parallel(transformer: Any, group: Group) -> None:
    """diffusers' context parallelism on the group's ``ring x ulysses`` sub-mesh: Ulysses with our
    LTX-2 plan (``reelgen.engines.sequence``); ring stays refused by ``check_spec``."""
    from reelgen.engines.sequence import enable_ulysses

    check_spec(group.spec)
    group.sequence_split = enable_ulysses(transformer, group)


def check_spec(spec: ParallelSpec) -> None:
    """Refuse, before any process starts, a group this build cannot run (see ``SEQUENCE_PARALLEL_BLOCKERS``)."""
    modes = [m for m in SEQUENCE_PARALLEL_BLOCKERS if getattr(spec, m) > 1]
    if modes:
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"parallel {spec.as_text()}: "
            + "; ".join(
                f"{m} sequence parallelism for LTX-2 is not available: {SEQUENCE_PARALLEL_BLOCKERS[m]}" for m in modes
            ),
        )


def attach(engine: Any, group: Group) -> GuidanceSplit | None:
    """Share ``engine``'s transformer work across ``group`` (guidance rows, then the sequence)."""
    transformer = engine.transformer
    if group.spec.sequence > 1:
        enable_sequence_parallel(transformer, group)
    if group.spec.cfg > 1:
        return GuidanceSplit(transformer, group.cfg_rank, group.spec.cfg, group.cfg_group)
    return None


def group_steps(group: Group, on_step: StepCallback | None) -> StepCallback:
    """A step callback for every rank: rank 0 asks ``on_step`` and the answer is broadcast, so a
    cancel stops every rank at the same step boundary."""

    def step(done: int, total: int) -> bool:
        go = True
        if group.rank == 0 and on_step is not None:
            go = on_step(done, total) is not False
        return group.broadcast_flag(go)

    return step


def run_group(devices: list[str], target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(rank, devices, port, *args)`` in one process per device and wait for all of them.

    Any rank failing fails the group (``torch.multiprocessing.spawn`` ends the others)."""
    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, spawn

    port = free_port()
    try:
        spawn(target, args=(devices, port, *args), nprocs=len(devices), join=True)  # type: ignore[no-untyped-call]
    except ProcessRaisedException as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"a rank of the device group failed: {message}") from None
    except ProcessExitedException as exc:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"a rank of the device group died: {exc}") from None


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
