"""The profile's LoRAs: checked against the transformer before serving, loaded once, switched per stage.

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
    for name, module in transformer.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")):
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


class Adapters:
    """The profile's LoRAs loaded once into the shared components; ``activate`` switches them per stage."""

    def __init__(self, pipe: Any, profile: Profile | None, *, random_full_size: bool = False) -> None:
        """Load ``profile``'s LoRAs into ``pipe``'s components; ``random_full_size`` (``--load-format
        dummy``) stands a random rank-384 LoRA over every linear layer in for each file."""
        self._pipe = pipe
        self._active: tuple[tuple[str, float], ...] | None = None
        specs = list(profile.loras.values()) if profile is not None else []
        self.names = tuple(s.name for s in specs)
        modules = {"transformer": pipe.transformer, "connectors": pipe.connectors}
        for spec in specs:
            source: Any
            kwargs: dict[str, Any] = {}
            if random_full_size:
                source = build_tiny_lora(pipe.transformer, rank=384, every_linear=True)
            elif spec.is_tiny:
                source = build_tiny_lora(pipe.transformer)
            else:
                assert profile is not None
                path = resolve_lora(spec, profile)
                if path is None:
                    source, kwargs = profile.weights, {"weight_name": spec.path}
                else:
                    lora_fits(spec.name, _header(path), modules)
                    source = str(path)
            try:
                with warnings.catch_warnings():
                    # several named adapters on one model is the point here, not a mistake
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
                    pipe.load_lora_weights(source, adapter_name=spec.name, **kwargs)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ReelgenError(ErrorCode.WEIGHTS_NOT_FOUND, f"cannot load LoRA {spec.name!r}: {exc}") from None
        self.activate(())

    def activate(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Run with exactly these adapters at these strengths (none: the base weights)."""
        if loras == self._active or (not self.names and not loras):
            self._active = loras
            return
        unknown = [n for n, _ in loras if n not in self.names]
        if unknown:
            raise ReelgenError(ErrorCode.INVALID_PROFILE, f"LoRA(s) {unknown} are not loaded (loaded: {self.names})")
        if loras:
            self._pipe.enable_lora()
            self._pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
        else:
            self._pipe.disable_lora()
        self._active = loras
