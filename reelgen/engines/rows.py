"""Guidance rows shared across a guidance group: ``GuidanceSplit`` wraps the transformer's ``forward``.

Part of the device-group machinery (``reelgen.engines.parallel`` forms the group and attaches
this); kept apart because it is the one piece that knows the shape of LTX-2's guided step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
