"""Where an LTX-2 engine's components come from: a diffusers-layout directory or hub id, tiny weights
built in code, or the full architecture with random weights (``--load-format dummy``); plus the
serve-time check of a profile against the model it names (LoRA files, STG blocks), which reads
configs and file headers only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.engines.tiny import lib
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import torch

    from reelgen.profiles import Profile

LOAD_FORMATS = ("auto", "dummy")
#: the components LoRAs may adapt (diffusers' LTX2LoraLoaderMixin)
LORA_TARGETS = ("transformer", "connectors")


def resolve_device(device: str | None) -> str:
    """``None`` → ``cuda:0`` when CUDA is present, else ``cpu``; checks ``cpu`` / ``cuda`` / ``cuda:N``."""
    import torch

    if device is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"device {device!r}: CUDA is not available here")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS,
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present",
            )
        return f"cuda:{index}"
    raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


def is_local(weights: str) -> bool:
    return weights.startswith(("/", ".", "~")) or Path(weights).expanduser().exists()


def _layout(weights: str) -> Path:
    """A local weights directory, checked to be in diffusers layout."""
    root = Path(weights).expanduser()
    if not (root / "model_index.json").is_file():
        raise ReelgenError(
            ErrorCode.WEIGHTS_NOT_FOUND,
            f"weights {weights!r}: expected a diffusers-layout directory with model_index.json "
            "(transformer/, vae/, audio_vae/, vocoder/, connectors/, text_encoder/, tokenizer/, scheduler/)",
        )
    return root


def meta_modules(profile: Profile, load_format: str = "auto") -> dict[str, Any]:
    """The profile's transformer and text connectors on the meta device (structure and shapes, no memory)."""
    import torch

    from reelgen.engines.architectures import build_dummy_components
    from reelgen.engines.tiny import build_tiny_components

    if profile.is_tiny:
        comps = build_tiny_components(generation=profile.generation)
        return {"transformer": comps["transformer"], "connectors": comps["connectors"]}
    if load_format == "dummy" or not is_local(profile.weights):
        comps = build_dummy_components("meta", torch.bfloat16, generation=profile.generation, text_encoder=False)
        return {"transformer": comps["transformer"], "connectors": comps["connectors"]}
    diffusers, ltx2 = lib("diffusers"), lib("diffusers.pipelines.ltx2")
    root = _layout(profile.weights)
    out: dict[str, Any] = {}
    parts = (
        ("transformer", profile.transformer_subfolder, diffusers.LTX2VideoTransformer3DModel),
        ("connectors", "connectors", ltx2.LTX2TextConnectors),
    )
    for name, folder, cls in parts:
        try:
            config = cls.load_config(str(root / folder))
        except (OSError, ValueError) as exc:
            msg = f"weights {profile.weights!r}: no {name} config ({exc})"
            raise ReelgenError(ErrorCode.WEIGHTS_NOT_FOUND, msg) from None
        with torch.device("meta"):
            out[name] = cls.from_config(config)
    return out


def check_profile(profile: Profile, load_format: str = "auto", modules: dict[str, Any] | None = None) -> None:
    """Refuse, before serving, a profile its model cannot run: LoRA files missing or made for another
    architecture, STG blocks the transformer does not have, an attention backend that cannot run here.
    Configs and file headers only (``modules``: the transformer and connectors when already built;
    else they are built on the meta device, and only when there is something to check against them:
    a tiny profile with tiny LoRAs and native attention needs no torch at all)."""
    from reelgen.engines.lora import check_lora_file
    from reelgen.engines.tiny import TINY_LAYERS

    files = [lora for lora in profile.loras.values() if not lora.is_tiny] if load_format != "dummy" else []
    needs_model = not profile.is_tiny or files or profile.acceleration.attention_backend != "native"
    if modules is None and needs_model:
        modules = meta_modules(profile, load_format)
    if modules is not None:
        modules = {k: v for k, v in modules.items() if k in LORA_TARGETS}
        set_attention_backend(profile, modules["transformer"])
        layers = int(modules["transformer"].config.num_layers)
    else:
        layers = TINY_LAYERS
    for mode, spec in profile.modes.items():
        for stage in spec.stages:
            bad = [b for b in stage.stg_blocks if b >= layers]
            if bad:
                raise ReelgenError(
                    ErrorCode.INVALID_PROFILE,
                    f"profile {profile.name!r}: modes.{mode.value}.{stage.name}.stg_blocks {bad}: the transformer "
                    f"has blocks 0-{layers - 1}",
                )
    for lora in files:  # dummy engines stand random LoRAs in for the files
        assert modules is not None
        check_lora_file(lora, profile, modules)


def set_attention_backend(profile: Profile, transformer: Any) -> None:
    """Switch ``transformer`` to the profile's attention backend; one it cannot use here (a kernel
    package that is not installed, an unknown name) is refused with diffusers' own reason."""
    backend = profile.acceleration.attention_backend
    if backend == "native":
        return
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE,
            f"profile {profile.name!r}: acceleration.attention_backend {backend!r} cannot run here: {exc}",
        ) from None


def check_dummy_fits(device: str, dtype: torch.dtype, offload_text_encoder: bool, generation: str = "2.0") -> None:
    """Refuse a full-size dummy build that cannot fit, before allocating tens of GB."""
    import os

    import torch

    from reelgen.engines.architectures import build_dummy_components, build_dummy_latent_upsampler

    size = torch.empty((), dtype=dtype).element_size()
    comps = build_dummy_components("meta", dtype, generation=generation)  # shapes only, no memory
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items() if isinstance(v, torch.nn.Module)}
    up = build_dummy_latent_upsampler("meta", dtype, generation=generation)
    counts["latent_upsampler"] = sum(p.numel() for p in up.parameters())
    on_device = sum(n for k, n in counts.items() if not (offload_text_encoder and k == "text_encoder")) * size
    if device.startswith("cuda"):
        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
        where = f"{device} has {have / 2**30:.0f} GiB"
    else:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        where = f"this host has {have / 2**30:.0f} GiB of RAM"
    if on_device > have:
        hint = "" if offload_text_encoder or not device.startswith("cuda") else " (try offload_text_encoder = true)"
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"the full-size dummy weights need {on_device / 2**30:.0f} GiB but {where}{hint}; "
            "use the ltx-2-tiny profile for a small random-weight engine",
        )


def load_pretrained(profile: Profile, dtype: torch.dtype, needs_upsampler: bool) -> tuple[dict[str, Any], Any]:
    """Components from a diffusers-layout directory or hub id, plus the latent upsampler."""
    weights = profile.weights
    local = is_local(weights)
    root = _layout(weights) if local else Path(weights)
    source = str(root) if local else weights
    try:
        diffusers = lib("diffusers")
        extra: dict[str, Any] = {}
        if profile.transformer_subfolder != "transformer":
            extra["transformer"] = diffusers.LTX2VideoTransformer3DModel.from_pretrained(
                source, subfolder=profile.transformer_subfolder, dtype=dtype
            )
        pipe = diffusers.LTX2Pipeline.from_pretrained(source, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        raise ReelgenError(ErrorCode.WEIGHTS_NOT_FOUND, f"cannot load weights {weights!r}: {exc}") from None
    comps = {k: v for k, v in pipe.components.items() if v is not None}
    upsampler = _load_upsampler(profile, root if local else None, dtype) if needs_upsampler else None
    return comps, upsampler


def _load_upsampler(profile: Profile, root: Path | None, dtype: torch.dtype) -> Any:
    """The latent upsampler, as the released checkpoint lays it out.

    ``upsampler_weights`` is a subfolder of the weights (``latent_upsampler``, as in
    ``Lightricks/LTX-2``), or a directory of its own: either the model itself (``config.json`` +
    safetensors) or an ``LTX2LatentUpsamplePipeline`` layout with a ``latent_upsampler/`` folder;
    on an online machine it may also be a hub id.
    """
    model = lib("diffusers.pipelines.ltx2").LTX2LatentUpsamplerModel
    name = profile.upsampler_weights
    if not name:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE, f"profile {profile.name!r} has a two-stage mode but no upsampler_weights"
        )
    candidates: list[Path] = []
    if root is not None and not Path(name).is_absolute():
        candidates.append(root / name)
    if is_local(name):
        candidates.append(Path(name).expanduser())
    try:
        for path in candidates:
            if (path / "config.json").is_file():
                return model.from_pretrained(str(path), dtype=dtype)
            if (path / "latent_upsampler" / "config.json").is_file():
                return model.from_pretrained(str(path), subfolder="latent_upsampler", dtype=dtype)
        if candidates:
            raise ReelgenError(
                ErrorCode.WEIGHTS_NOT_FOUND,
                f"latent upsampler {name!r} not found (looked in {', '.join(str(c) for c in candidates)})",
            )
        if root is None and "/" not in name:  # a subfolder of a hub repo
            return model.from_pretrained(profile.weights, subfolder=name, dtype=dtype)
        return model.from_pretrained(name, subfolder="latent_upsampler", dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ReelgenError(ErrorCode.WEIGHTS_NOT_FOUND, f"cannot load latent upsampler {name!r}: {exc}") from None
