"""Ulysses sequence parallelism for the LTX-2 transformer, through diffusers' context parallelism.

Part of the device-group machinery (``reelgen.engines.parallel`` forms the group and calls
``enable_ulysses``). Each rank of a Ulysses group holds ``1/u`` of every token stream of a
transformer call (video, audio, the two prompt streams); around each attention diffusers' templated
Ulysses attention swaps the sequence split for a head split (``all_to_all_single``), so every rank
attends over whole sequences with ``1/u`` of the heads; the output projections gather the streams
back (``all_gather``), so the pipeline sees whole latents on every rank.

What we add to diffusers 0.42.1, and why (each a deliberate difference, narrowest first):

* **The plan** (``ltx2_plan``). The model's own ``_cp_plan`` is LTX-1's (huggingface/diffusers#14316):
  it never splits the audio stream, splits 1 of the 4 RoPE modules, and splits RoPE on axis 1,
  which is right for ``rope_type = "interleaved"`` (``(B, T, D)``) but not for the released
  ``"split"`` RoPE (``(B, H, T, D/2)``: the tokens are axis 2). Ours splits both token streams,
  both prompt streams with their masks, the per-token timesteps (the condition pipelines give one
  timestep per video token), the keyframe marker, and the output of all four RoPE modules on the
  axis their ``rope_type`` puts the tokens on; it gathers both output projections. The
  cross-modal attentions (video queries over audio keys and back) need nothing more: diffusers'
  Ulysses attention exchanges queries and keys separately, so streams of different lengths are
  fine as long as both are split.
* **Optional inputs** (``SequenceSplit``): diffusers' split hook raises for a planned input the
  caller did not pass (``audio_timestep``, the masks); the wrapper passes them as ``None``, which
  the hook skips and the transformer treats as not given.
* **Lengths that do not divide by ``u``** (``SequenceSplit``): diffusers' plain Ulysses asserts
  that each split length divides by the degree. A call whose lengths do not divide (the audio
  stream often does not: its length follows the duration) runs diffusers' own "Ulysses anything"
  mode instead (uneven ``tensor_split`` shards, ``all_to_all_single`` with split sizes; no
  padding), chosen per call from the input shapes, which every rank sees the same.
* **Per-head masks** (``_heads_of_this_rank``): diffusers' Ulysses attention gathers a mask's key
  axis but not its head axis (huggingface/diffusers#14317): LTX-2's attention processor expands
  the prompt mask to every head (``(B, H, 1, S)``), while after the all-to-all a rank holds heads
  ``[r * H/u, (r + 1) * H/u)``, so SDPA cannot broadcast the mask. We re-register the transformer's
  attention backend in diffusers' registry (``_AttentionBackendRegistry.register``, same
  constraints) as a wrapper that, only when a call is context-parallel, keeps this rank's heads of
  a per-head mask and otherwise calls the backend unchanged.
* **Setup** (``enable_ulysses``): ``ModelMixin.enable_parallelism`` derives the device as
  ``cuda:(global rank % device count)``, which divides by zero on a host without an accelerator
  (gloo on CPU) and names the wrong GPU for a group that does not start at ``cuda:0``. We do what
  it does for context parallelism (check the attention backend supports it, set the config up on
  the group's mesh, record it on the model and its attention processors, apply the plan with
  diffusers' ``apply_context_parallel`` hooks) with the group's own device and mesh.

Not supported (refused with the reason): ring attention (``reelgen.engines.parallel``), a head
count that does not divide by ``u`` (diffusers pads heads only in a form that does not fit LTX-2's
per-head gates), and ``video_self_attention_mask`` (the IC-LoRA mask; the processor would pad
the whole mask against the local length). Ulysses needs ``all_to_all_single``, which gloo has
(both with equal and with given split sizes; tests/test_parallel.py runs both).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from reelgen.engines.parallel import Group

#: the transformer's token-stream inputs and the axis their tokens are on (all split on axis 1)
SPLIT_INPUTS = {
    "hidden_states": 3,  # (B, T_video, C)
    "audio_hidden_states": 3,  # (B, T_audio, C)
    "encoder_hidden_states": 3,  # (B, T_prompt, C)
    "audio_encoder_hidden_states": 3,
    "encoder_attention_mask": 2,  # (B, T_prompt)
    "audio_encoder_attention_mask": 2,
    "timestep": 2,  # (B, T_video) in the condition pipelines; (B,) is left whole
    "audio_timestep": 2,  # (B, T_audio) when given per token; (B,) is left whole
    "video_keyframes_mask": 3,  # (B, T_video, 1)
}
#: the RoPE modules (each returns (cos, sin) for one stream's tokens)
ROPE_MODULES = ("rope", "audio_rope", "cross_attn_rope", "cross_attn_audio_rope")
#: the output projections (gathered back to whole streams by ``gather_shards``)
OUTPUT_MODULES = ("proj_out", "audio_proj_out")
GATHER_HOOK = "reelgen_cp_gather"


def ltx2_plan(rope_type: str) -> dict[str, Any]:
    """diffusers' context-parallel plan for ``LTX2VideoTransformer3DModel`` with ``rope_type``."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    if rope_type == "split":  # (B, H, T, D/2)
        rope_axis, rope_dims = 2, 4
    elif rope_type == "interleaved":  # (B, T, D)
        rope_axis, rope_dims = 1, 3
    else:
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"ulysses: unknown LTX-2 rope_type {rope_type!r}")
    plan: dict[str, Any] = {
        "": {name: ContextParallelInput(split_dim=1, expected_dims=dims) for name, dims in SPLIT_INPUTS.items()}
    }
    for module in ROPE_MODULES:
        plan[module] = {
            i: ContextParallelInput(split_dim=rope_axis, expected_dims=rope_dims, split_output=True) for i in (0, 1)
        }
    return plan


def split_lengths(kwargs: dict[str, Any]) -> list[int]:
    """The lengths a transformer call's planned inputs are split along (those the hook splits)."""
    import torch

    lengths = []
    for name, dims in SPLIT_INPUTS.items():
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.ndim == dims:
            lengths.append(int(value.shape[1]))
    return lengths


def shard_sizes(length: int, size: int) -> list[int]:
    """How a length is shared over ``size`` ranks (``torch.tensor_split``: the first ranks one more)."""
    per, extra = divmod(length, size)
    return [per + (1 if r < extra else 0) for r in range(size)]


def head_range(heads: int, rank: int, size: int) -> range:
    """The heads a rank of a Ulysses group of ``size`` attends with after the all-to-all."""
    per = heads // size
    return range(rank * per, (rank + 1) * per)


class SequenceSplit:
    """The transformer's ``forward`` on a Ulysses group: optional planned inputs passed as ``None``,
    and plain Ulysses or diffusers' "anything" mode chosen from the call's lengths.

    Installed outside diffusers' context-parallel hooks (and inside ``GuidanceSplit``, which splits
    the rows first)."""

    def __init__(self, transformer: Any, cp_config: Any) -> None:
        self.transformer, self.cp_config = transformer, cp_config
        self.size = int(cp_config.ulysses_degree)
        self._forward: Callable[..., Any] = transformer.forward
        #: calls whose streams split evenly / unevenly ("anything" mode)
        self.even_calls = 0
        self.uneven_calls = 0
        transformer.forward = self.forward

    def remove(self) -> None:
        self.transformer.forward = self._forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "ulysses: the transformer must be called by keyword")
        if kwargs.get("video_self_attention_mask") is not None:
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS,
                "ulysses: video_self_attention_mask (IC-LoRA) is not supported with sequence parallelism",
            )
        for name in SPLIT_INPUTS:
            kwargs.setdefault(name, None)
        even = all(n % self.size == 0 for n in split_lengths(kwargs))
        self.cp_config.ulysses_anything = not even
        if even:
            self.even_calls += 1
        else:
            self.uneven_calls += 1
        return self._forward(**kwargs)


def gather_shards(local: Any, cp_config: Any) -> Any:
    """The whole stream on every rank from each rank's shard (axis 1): shards padded to the longest,
    ``all_gather``-ed (gloo's ``all_gather`` needs equal sizes), trimmed and joined in rank order."""
    import torch
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import gather_size_by_comm

    group = cp_config._flattened_mesh.get_group()
    size = dist.get_world_size(group)
    local = local.contiguous()
    n = int(local.shape[1])
    sizes = gather_size_by_comm(n, group) if cp_config.ulysses_anything else [n] * size
    top = max(sizes)
    if n < top:
        local = torch.nn.functional.pad(local, (0, 0) * (local.ndim - 2) + (0, top - n))
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local, group=group)
    return torch.cat([p[:, :k] for p, k in zip(parts, sizes, strict=True)], dim=1)


def _gather_hook(cp_config: Any) -> Any:
    """A diffusers ``ModelHook`` that gathers a module's output with ``gather_shards``."""
    from diffusers.hooks.hooks import ModelHook

    class GatherShards(ModelHook):
        def post_forward(self, module: Any, output: Any) -> Any:
            return gather_shards(output, cp_config)

    return GatherShards()  # type: ignore[no-untyped-call]


def _heads_of_this_rank(backend: Callable[..., Any]) -> Callable[..., Any]:
    """``backend`` with a per-head mask cut to this rank's heads when the call is Ulysses-parallel."""

    @functools.wraps(backend)
    def attention(*args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("_parallel_config")
        mask = kwargs.get("attn_mask")
        cp = getattr(config, "context_parallel_config", None)
        if cp is not None and mask is not None and mask.ndim == 4 and cp.ulysses_degree > 1 and cp.ring_degree == 1:
            heads = int(kwargs["query"].shape[2])
            if mask.shape[1] == heads and heads > 1:
                local = head_range(heads, cp._ulysses_local_rank, cp.ulysses_degree)
                kwargs["attn_mask"] = mask[:, local.start : local.stop]
        return backend(*args, **kwargs)

    attention.__reelgen_heads__ = True  # type: ignore[attr-defined]
    return attention


def _cut_mask_heads(backend_name: Any) -> None:
    """Re-register ``backend_name`` in diffusers' attention registry as ``_heads_of_this_rank`` of
    itself (once per process)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as Registry

    backend = Registry._backends[backend_name]
    if getattr(backend, "__reelgen_heads__", False):
        return
    Registry.register(
        backend_name,
        constraints=list(Registry._constraints.get(backend_name, [])),
        supports_context_parallel=True,
    )(_heads_of_this_rank(backend))


class _WholeTimestepNote(logging.Filter):
    """Drops the split hook's note that a one-per-row timestep ``(B,)`` is left whole: that is the
    plan (only per-token timesteps are split), not a problem to report on every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Expected input tensor to have 2 dimensions, but got 1")


def _quiet_whole_timesteps() -> None:
    log = logging.getLogger("diffusers.hooks.context_parallel")
    if not any(isinstance(f, _WholeTimestepNote) for f in log.filters):
        log.addFilter(_WholeTimestepNote())


def _backend_of(transformer: Any) -> Any:
    from diffusers.models.attention_dispatch import AttentionBackendName
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as Registry

    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            name = processor._attention_backend
            return AttentionBackendName(name) if name is not None else Registry._active_backend
    raise ReelgenError(ErrorCode.GENERATION_FAILED, "ulysses: the transformer has no attention processors")


def check_heads(config: Any, ulysses: int) -> None:
    """Refuse a Ulysses degree that does not divide every attention's head count."""
    heads = {"video": int(config.num_attention_heads), "audio": int(config.audio_num_attention_heads)}
    bad = {k: v for k, v in heads.items() if v % ulysses}
    if bad:
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"ulysses={ulysses}: the model's attention heads ({', '.join(f'{k} {v}' for k, v in heads.items())}) "
            "must divide by the Ulysses degree",
        )


def enable_ulysses(transformer: Any, group: Group) -> SequenceSplit:
    """diffusers' context parallelism (Ulysses) on the group's ``ring x ulysses`` sub-mesh, with our
    plan for LTX-2 (see the module's docstring for each difference from ``enable_parallelism``)."""
    import torch
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.hooks.hooks import HookRegistry
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as Registry

    check_heads(transformer.config, group.spec.ulysses)
    backend = _backend_of(transformer)
    if not Registry._is_context_parallel_available(backend):
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"ulysses: the attention backend {backend.value!r} has no context-parallel support in diffusers "
            f"(use one of {', '.join(sorted(Registry._supports_context_parallel))})",
        )
    _cut_mask_heads(backend)
    _quiet_whole_timesteps()
    cp = ContextParallelConfig(ulysses_degree=group.spec.ulysses, ring_degree=group.spec.ring, mesh=group.mesh)
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(group.rank, group.spec.world, torch.device(group.device), mesh=group.mesh)
    transformer._parallel_config = config
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(transformer, cp, ltx2_plan(str(transformer.config.rope_type)))
    for name in OUTPUT_MODULES:
        module = getattr(transformer, name)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(_gather_hook(cp), GATHER_HOOK)
    return SequenceSplit(transformer, cp)
