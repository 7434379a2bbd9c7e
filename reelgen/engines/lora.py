"""The profile's LoRAs: checked against the transformer before serving, loaded once, switched per stage;
per-request and camera LoRAs loaded on first use and kept in a bounded LRU (``Adapters``).

Loading goes through diffusers' ``LTX2LoraLoaderMixin`` (peft adapters injected into the shared
transformer and text connectors), so every pipeline built on those components sees them. A stage
names the adapters it runs with (``Stage.loras``); ``Adapters.activate`` switches the active set
and strengths without touching the base weights, and an empty set disables every adapter, which
gives back the base model bit for bit.

Files are accepted in diffusers/peft layout (``transformer.<module>.lora_A.weight``) and in the
layout Lightricks publishes (``diffusion_model.<module>.lora_A.weight``; diffusers converts it).
``lora_fits`` reads only the safetensors header (names and shapes, no tensor data), so checking a
multi-GB LoRA at ``reelgen serve`` start costs milliseconds.
"""

from __future__ import annotations

import warnings
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.engines.tiny import lib
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import torch

    from reelgen.profiles import LoraSpec, Profile

#: Modules a tiny LoRA adapts (every self-attention projection of every block).
_TINY_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")


def build_tiny_lora(
    transformer: torch.nn.Module, *, rank: int = 4, seed: int = 7, every_linear: bool = False
) -> dict[str, torch.Tensor]:
    """A seeded random LoRA for a transformer, in the layout Lightricks publishes (``diffusion_model.``).

    By default it adapts the self-attention projections (tiny test LoRAs); ``every_linear`` adapts
    every linear layer of the blocks at the transformer's device and dtype, as the distilled LoRA
    does (``--load-format dummy`` uses rank 384: the real LoRA's cost, random values).
    """
    import torch

    param = next(transformer.parameters())
    device, dtype = (param.device, param.dtype) if every_linear else (torch.device("cpu"), torch.float32)
    gen = torch.Generator(device=device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for found, module in transformer.named_modules():
        name = found.removesuffix(".base_layer")  # a layer already adapted by peft: its own linear layer
        if not (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")) or ".lora_" in name:
            continue
        if not (every_linear or name.endswith(_TINY_TARGETS)):
            continue
        scale = 0.5 if not every_linear else 1e-3
        a = torch.randn(rank, module.in_features, generator=gen, device=device, dtype=dtype) * scale
        b = torch.randn(module.out_features, rank, generator=gen, device=device, dtype=dtype) * scale
        state[f"diffusion_model.{name}.lora_A.weight"] = a
        state[f"diffusion_model.{name}.lora_B.weight"] = b
    return state


def resolve_lora(spec: LoraSpec, profile: Profile) -> Path | None:
    """Where a LoRA file is: absolute (or ``~``), else relative to a local weights directory.

    None when the weights are a hub id and the path is a file name in that repo (fetched at load).
    """
    path = Path(spec.path).expanduser()
    if path.is_absolute():
        return path
    if spec.repo is not None:
        return None  # a file of its own hub repo
    weights = Path(profile.weights).expanduser()
    if profile.weights.startswith(("/", ".", "~")) or weights.is_dir():
        return weights / path
    return None


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"LoRA file {path} does not exist") from None
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"LoRA file {path} is not a safetensors file: {exc}") from None


def lora_fits(name: str, shapes: dict[str, tuple[int, ...]], modules: dict[str, torch.nn.Module]) -> None:
    """Refuse a LoRA whose layers are not linear layers of this model with these shapes.

    ``shapes``: the file's tensor names and shapes; ``modules``: ``{"transformer": ..., "connectors": ...}``
    (meta-device modules are enough: only names and shapes are compared).
    """
    import torch

    meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    try:
        state = lib("diffusers").LTX2Pipeline.lora_state_dict(meta)
    except Exception as exc:  # diffusers raises ValueError/KeyError for layouts it cannot read
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"LoRA {name!r}: unreadable layout ({exc})") from None
    if not state or not all("lora" in k for k in state):
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"LoRA {name!r}: no LoRA layers (lora_A/lora_B) found")
    named = {root: dict(m.named_modules()) for root, m in modules.items()}
    for key, tensor in state.items():
        root, _, rest = key.partition(".")
        module_name, _, kind = rest.rpartition(".lora_")
        layer = named.get(root, {}).get(module_name)
        layer = getattr(layer, "base_layer", layer)  # a layer already adapted by peft wraps the linear one
        if not isinstance(layer, torch.nn.Linear):
            raise ReelgenError(
                ErrorCode.INVALID_PROFILE,
                f"LoRA {name!r} targets {root}.{module_name}, which this model does not have as a linear layer "
                "(a LoRA made for another model or generation?)",
            )
        want = layer.in_features if kind.startswith("A") else layer.out_features
        got = tensor.shape[1] if kind.startswith("A") else tensor.shape[0]
        if got != want:
            raise ReelgenError(
                ErrorCode.INVALID_PROFILE,
                f"LoRA {name!r}: {key} has {got} features where this model's layer has {want} "
                "(a LoRA made for another model size or generation?)",
            )


def check_lora_file(spec: LoraSpec, profile: Profile, modules: dict[str, Any]) -> None:
    """Serve-time check of one LoRA file against the model (no-op for tiny LoRAs and hub-hosted files)."""
    if spec.is_tiny:
        return
    path = resolve_lora(spec, profile)
    if path is None:
        return  # a file of the hub repo: fetched (and checked by diffusers) when the worker loads
    lora_fits(spec.name, _header(path), modules)


def _tiny_seed(name: str) -> int:
    """The seed of a tiny LoRA: 7 for the distilled one (as always), else one derived from its name,
    so each tiny camera or per-request LoRA is a different adapter."""
    return 7 if name == "distilled" else zlib.crc32(name.encode()) & 0x7FFFFFFF


class Adapters:
    """The profile's LoRAs in the shared components: the stage LoRAs loaded once and kept, the
    per-request and camera LoRAs loaded on first use and kept in an LRU of ``max_loaded_loras``;
    ``activate`` switches the active set and strengths per stage without touching the base weights."""

    def __init__(self, pipe: Any, profile: Profile | None, *, random_full_size: bool = False) -> None:
        """Load ``profile``'s stage LoRAs into ``pipe``'s components; ``random_full_size`` (``--load-format
        dummy``) stands a random rank-384 LoRA over every linear layer in for each file."""
        self._pipe = pipe
        self._profile = profile
        self._random_full_size = random_full_size
        self._active: tuple[tuple[str, float], ...] | None = None
        self._specs: dict[str, LoraSpec] = dict(profile.loras) if profile is not None else {}
        pinned = {n for mode in profile.modes.values() for st in mode.stages for n, _ in st.loras} if profile else set()
        #: the stage LoRAs: loaded now, never evicted
        self.pinned = tuple(n for n in self._specs if n in pinned)
        #: the on-demand adapters now loaded, least recently used first
        self._lru: OrderedDict[str, None] = OrderedDict()
        self.capacity = profile.max_loaded_loras if profile is not None else 0
        #: adapters loaded (pinned ones included) and evicted since the engine started
        self.loads = 0
        self.evictions = 0
        for name in self.pinned:
            self._load(self._specs[name], ErrorCode.WEIGHTS_NOT_FOUND)
        self.activate(())

    @property
    def names(self) -> tuple[str, ...]:
        """The adapters now loaded."""
        return (*self.pinned, *self._lru)

    def _source(self, spec: LoraSpec) -> tuple[Any, dict[str, Any]]:
        if self._random_full_size:
            return build_tiny_lora(self._pipe.transformer, rank=384, every_linear=True), {}
        if spec.is_tiny:
            return build_tiny_lora(self._pipe.transformer, seed=_tiny_seed(spec.name)), {}
        assert self._profile is not None
        path = resolve_lora(spec, self._profile)
        if path is None:
            return spec.repo or self._profile.weights, {"weight_name": spec.path}
        modules = {"transformer": self._pipe.transformer, "connectors": self._pipe.connectors}
        lora_fits(spec.name, _header(path), modules)
        return str(path), {}

    def _load(self, spec: LoraSpec, code: ErrorCode) -> None:
        """Load one adapter; on any failure nothing of it stays in the model (``code`` is raised)."""
        try:
            source, kwargs = self._source(spec)
            with warnings.catch_warnings():
                # several named adapters on one model is the point here, not a mistake
                warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
                self._pipe.load_lora_weights(source, adapter_name=spec.name, **kwargs)
            if not any(spec.name in names for names in self._pipe.get_list_adapters().values()):
                raise ValueError("it has no layers this model has (a LoRA made for another model?)")
        except (ReelgenError, OSError, ValueError, KeyError, RuntimeError) as exc:
            self._drop(spec.name)
            if isinstance(exc, ReelgenError) and code is not ErrorCode.LORA_FAILED:
                raise  # a stage LoRA the model cannot take: the profile is wrong (INVALID_PROFILE)
            reason = exc.message if isinstance(exc, ReelgenError) else str(exc)
            raise ReelgenError(code, f"cannot load LoRA {spec.name!r}: {reason}") from None
        self.loads += 1

    def _drop(self, name: str) -> None:
        """Remove an adapter (whole or half-loaded) from every component that holds it."""
        self._active = None  # the next activate sets the adapters afresh
        for component in (self._pipe.transformer, self._pipe.connectors):
            if name in (getattr(component, "peft_config", None) or {}):
                component.delete_adapters(name)

    def _ensure(self, names: list[str]) -> None:
        """Load the on-demand adapters among ``names`` (LRU order updated); evict the least recently
        used ones not among ``names`` beyond the capacity."""
        for name in names:
            if name in self.pinned:
                continue
            if name in self._lru:
                self._lru.move_to_end(name)
                continue
            spec = self._specs.get(name)
            if spec is None:
                raise ReelgenError(ErrorCode.INVALID_INPUT, f"LoRA {name!r} is not one this profile declares")
            self._load(spec, ErrorCode.LORA_FAILED)
            self._lru[name] = None
        while len(self._lru) > max(self.capacity, sum(1 for n in names if n in self._lru)):
            victim = next(n for n in self._lru if n not in names)
            del self._lru[victim]
            self._drop(victim)
            self.evictions += 1

    def activate(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Run with exactly these adapters at these strengths (none: the base weights, bit for bit);
        a LoRA not loaded yet is loaded first (``LORA_FAILED`` if it cannot be)."""
        if loras == self._active or (not self.names and not loras):
            self._active = loras
            return
        self._ensure([n for n, _ in loras])
        if loras:
            self._pipe.enable_lora()
            self._pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
        else:
            self._pipe.disable_lora()
        self._active = loras
