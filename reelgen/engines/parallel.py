"""One generation on several devices: guidance rows split across ranks, the sequence through diffusers.

A device group is ``world = cfg * ring * ulysses`` processes, one per listed device (``cpu`` may be
listed several times: one process each). Every rank loads the same engine and runs the same,
unmodified diffusers pipeline with the same seeds, so every rank holds the same latents at every
step; only the transformer's work is shared out:

* **guidance rows** (``cfg``): ``GuidanceSplit`` wraps the transformer's ``forward``. A call with
  ``B`` rows (classifier-free guidance batches the unconditional and conditional rows: ``B = 2``)
  runs rows ``[rank * B / cfg, (rank + 1) * B / cfg)`` on each rank of the guidance group and the
  outputs are ``all_gather``-ed (gloo, NCCL) before the pipeline's guidance combination sees them.
  A call whose rows do not divide (the single-row STG and modality calls, unguided stages) runs
  whole on every rank: correct, not faster.
* **sequence** (``ulysses``, ``ring``): diffusers' context parallelism
  (``transformer.enable_parallelism(config=ContextParallelConfig(...))``) on the ``ring x ulysses``
  sub-mesh. See ``enable_sequence_parallel`` for what diffusers 0.42 lacks for LTX-2 and what gloo
  lacks for each mode.

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
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from reelgen.profiles import Profile

#: the transformer keywords that carry one entry per row (split by ``GuidanceSplit``)
ROW_KEYWORDS = (
    "hidden_states",
    "audio_hidden_states",
    "encoder_hidden_states",
    "audio_encoder_hidden_states",
    "timestep",
    "audio_timestep",
    "sigma",
    "audio_sigma",
    "encoder_attention_mask",
    "audio_encoder_attention_mask",
    "video_coords",
    "audio_coords",
    "perturbation_mask",
    "video_self_attention_mask",
    "video_keyframes_mask",
)
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

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        import torch

        dist.broadcast_object_list(box, src=0, device=torch.device(self._comm_device()))
        return box[0]

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


def row_slice(rows: int, rank: int, size: int) -> slice | None:
    """The rows ``rank`` of ``size`` runs out of ``rows``; None when they do not divide (every rank runs all)."""
    if size <= 1 or rows % size:
        return None
    per = rows // size
    return slice(rank * per, (rank + 1) * per)


class GuidanceSplit:
    """Wraps a transformer's ``forward`` so the guidance group shares the rows of each step.

    * A call whose rows divide by the group's size (the guided call: unconditional + conditional)
      runs its share of the rows on each rank; the outputs are gathered (in rank order) before the
      pipeline combines them.
    * **Scheduled ahead** (a group of 2): LTX-2's guided step is a two-row call followed by one-row
      calls with the same conditional inputs (STG: ``spatio_temporal_guidance_blocks``; modality
      isolation: ``isolate_modalities``). Once a step has shown which one-row calls follow, the next
      two-row call runs whole on rank 0 while rank 1 runs those one-row calls on the conditional row;
      the outputs are gathered and each following call is answered from them after checking that
      its inputs are exactly the ones used (otherwise it runs whole). Each rank runs 2 of the 4
      rows, and each row runs exactly as in one process (same batch shapes).
    * Any other call (one row, unguided stages) runs whole on every rank.

    Every rank sees the same calls with the same inputs, so every rank takes the same branch. Hooks
    on the transformer (the step clock's row count, the step cache's counter) still see every call
    and row: the wrapper sits inside the module call, around ``forward`` only."""

    def __init__(self, transformer: Any, rank: int, size: int, group: Any) -> None:
        self.transformer = transformer
        self.rank, self.size, self.group = rank, size, group
        self._forward: Callable[..., Any] = transformer.forward
        #: calls whose rows were split / scheduled ahead / answered from the schedule / run whole
        self.split_calls = 0
        self.scheduled_calls = 0
        self.ahead_calls = 0
        self.whole_calls = 0
        #: the one-row calls (their guidance switches) seen since the last two-row call
        self._seen: list[tuple[Any, ...]] | None = None
        #: the one-row calls computed ahead: (switches, inputs used, outputs)
        self._ahead: list[tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = []
        transformer.forward = self.forward

    def remove(self) -> None:
        self.transformer.forward = self._forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:  # the pipelines call by keyword; a positional call is run whole
            self.whole_calls += 1
            return self._forward(*args, **kwargs)
        rows = int(kwargs["hidden_states"].shape[0])
        if rows == 1:
            return self._one_row(kwargs)
        self._ahead.clear()
        follow, self._seen = self._seen, []
        if self._can_schedule(rows, kwargs, follow):
            assert follow is not None
            return self._schedule(kwargs, follow[:2])
        part = row_slice(rows, self.rank, self.size)
        if part is None:
            self.whole_calls += 1
            return self._forward(**kwargs)
        self.split_calls += 1
        mine = {k: (v[part] if k in ROW_KEYWORDS and _is_rows(v, rows) else v) for k, v in kwargs.items()}
        out = self._forward(**mine)
        if isinstance(out, tuple):
            return tuple(torch_cat(self._gather(t)) for t in out)
        if hasattr(out, "to_tuple"):  # a diffusers output object (return_dict=True)
            for key in list(out.keys()):
                out[key] = torch_cat(self._gather(out[key]))
            return out
        return torch_cat(self._gather(out))

    def _one_row(self, kwargs: dict[str, Any]) -> Any:
        switches = _switches(kwargs)
        if self._seen is not None:
            self._seen.append(switches)
        if self._ahead:
            planned, used, out = self._ahead.pop(0)
            if planned == switches and _same_inputs(kwargs, used):
                self.ahead_calls += 1
                return out
            self._ahead.clear()
        self.whole_calls += 1
        return self._forward(**kwargs)

    def _can_schedule(self, rows: int, kwargs: dict[str, Any], follow: list[tuple[Any, ...]] | None) -> bool:
        return (
            self.size == 2
            and rows == 2
            and kwargs.get("return_dict") is False
            and not _switches(kwargs)[0]
            and not _switches(kwargs)[1]
            and follow is not None
            and len(follow) >= 2
            and all(f[0] or f[1] for f in follow[:2])
            and not getattr(self.transformer, "is_cache_enabled", False)
        )

    def _schedule(self, kwargs: dict[str, Any], follow: list[tuple[Any, ...]]) -> Any:
        import torch

        self.scheduled_calls += 1
        cond = {k: (v[1:2] if k in ROW_KEYWORDS and _is_rows(v, 2) else v) for k, v in kwargs.items()}
        calls = [
            cond | {"spatio_temporal_guidance_blocks": list(b) if b else None, "isolate_modalities": i}
            for b, i in follow
        ]
        if self.rank == 0:
            out = tuple(self._forward(**kwargs))
        else:
            outs = [tuple(self._forward(**call)) for call in calls]
            out = tuple(torch.cat([o[k] for o in outs], dim=0) for k in range(len(outs[0])))
        gathered = [self._gather(t) for t in out]
        self._ahead = [
            (switch, call, tuple(parts[1][j : j + 1] for parts in gathered))
            for j, (switch, call) in enumerate(zip(follow, calls, strict=True))
        ]
        return tuple(parts[0] for parts in gathered)

    def _gather(self, tensor: Any) -> list[Any]:
        import torch
        import torch.distributed as dist

        if not isinstance(tensor, torch.Tensor):
            return [tensor]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor, group=self.group)
        return parts


def torch_cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]


def _switches(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The guidance switches of a transformer call: (STG blocks, isolate modalities)."""
    blocks = kwargs.get("spatio_temporal_guidance_blocks")
    return (tuple(blocks) if blocks else None, bool(kwargs.get("isolate_modalities", False)))


def _same_inputs(actual: dict[str, Any], used: dict[str, Any]) -> bool:
    """Whether a call's inputs are exactly those a scheduled-ahead computation used."""
    import torch

    if set(actual) - {"spatio_temporal_guidance_blocks", "isolate_modalities"} != set(used) - {
        "spatio_temporal_guidance_blocks",
        "isolate_modalities",
    }:
        return False
    for key, value in actual.items():
        if key in ("spatio_temporal_guidance_blocks", "isolate_modalities"):
            continue
        other = used[key]
        if isinstance(value, torch.Tensor) or isinstance(other, torch.Tensor):
            if not (
                isinstance(value, torch.Tensor)
                and isinstance(other, torch.Tensor)
                and value.shape == other.shape
                and value.dtype == other.dtype
                and torch.equal(value, other)
            ):
                return False
        elif value != other:
            return False
    return True


def _is_rows(value: Any, rows: int) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.ndim > 0 and int(value.shape[0]) == rows


#: why diffusers' context parallelism cannot run LTX-2 yet (checked with diffusers 0.42.1)
SEQUENCE_PARALLEL_BLOCKERS = {
    "ulysses": (
        "diffusers' LTX-2 context-parallel plan is LTX-1's (no audio stream, 1 of 4 RoPE modules, wrong RoPE "
        "axis for the released 'split' RoPE: huggingface/diffusers#14316) and its Ulysses attention does not "
        "shard a per-head attention mask (the fix is the open huggingface/diffusers#14317)"
    ),
    "ring": (
        "diffusers' ring attention needs the attention's log-sum-exp, which only its CUDA backends give "
        "(flash, sage, _native_cudnn, _native_flash); and LTX-2's plan has the same gaps as for ulysses "
        "(huggingface/diffusers#14316)"
    ),
}


def enable_sequence_parallel(transformer: Any, group: Group) -> None:
    """diffusers' context parallelism on the group's ``ring x ulysses`` sub-mesh, once diffusers can
    run it for LTX-2; until then the refusal of ``check_spec``, saying which piece is missing.

    What gloo has is not the blocker: diffusers' Ulysses attention (``all_to_all_single``) runs on
    gloo and matches one process exactly, and ring's ``allgather`` rotation is an ``all_gather``,
    which gloo has (tests/test_parallel.py runs both collectives and the group's mesh on gloo)."""
    check_spec(group.spec)


def check_spec(spec: ParallelSpec) -> None:
    """Refuse, before any process starts, a group this build cannot run (see ``enable_sequence_parallel``)."""
    modes = [m for m in ("ulysses", "ring") if getattr(spec, m) > 1]
    if modes:
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"parallel {spec.as_text()}: sequence parallelism for LTX-2 is not available: "
            + "; ".join(f"{m}: {SEQUENCE_PARALLEL_BLOCKERS[m]}" for m in modes),
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
