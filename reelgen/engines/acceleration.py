"""The profile's acceleration switches that act on loaded components: FP8 linear layers, the step
cache, VAE tiling by need, and the choice of video encoder.

Each switch can be turned off in the profile (``[profiles.X.acceleration]``); one that cannot run on
the device is refused by ``check_acceleration`` when the engine loads (and when ``reelgen serve``
starts, for every listed device), never in the middle of a task:

* ``fp8 = "torchao"``: torchao's float8 (dynamic row-wise activation and weight scales) on the linear
  layers of the transformer blocks, keeping in bf16 what the reference's FP8 policy keeps (the first
  block, the last five of 48, and every layer outside the blocks). Needs CUDA compute capability 8.9+
  and the ``torchao`` package.
* ``step_cache = "taylorseer"``: diffusers' TaylorSeer cache on the stages the plan marks
  (``Stage.step_cache``): after ``step_cache_warmup`` full steps, the transformer blocks run once every
  ``step_cache_interval`` steps; between them the output projections are predicted from the last full
  steps (first-order Taylor) and the blocks are skipped. Each guidance row (the pipelines' cache
  contexts) keeps its own history; the state is reset before every stage.
* ``vae_tiling = "auto"``: the video is decoded untiled when the estimated peak of an untiled decode
  fits in the device's free memory, in 512-pixel tiles otherwise (and after an out-of-memory error,
  once, tiled); on CPU, untiled. ``on``/``off`` force it.
* ``video_encoder = "auto"``: NVENC (``h264_nvenc``) when the engine runs on a CUDA device and FFmpeg
  can open it there, else x264.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import torch

    from reelgen.planning import Stage
    from reelgen.profiles import Acceleration, Profile

__all__ = [
    "FP8_MIN_CAPABILITY",
    "StepCache",
    "apply_fp8",
    "check_acceleration",
    "decode_bytes",
    "fp8_targets",
    "pick_video_encoder",
    "use_vae_tiling",
]

#: float8 matrix multiplication needs Ada (8.9), Hopper (9.0) or newer
FP8_MIN_CAPABILITY = (8, 9)
#: the reference keeps the first block and the last 5 of 48 in bf16 (ltx_core.quantization)
_FP8_KEPT_TAIL = 5 / 48
#: an untiled decode must fit in this share of the free device memory
_DECODE_HEADROOM = 0.8


def check_acceleration(profile: Profile, device: str) -> None:
    """Refuse switches that cannot run on ``device`` (before any weight is loaded)."""
    acc = profile.acceleration
    where = f"profile {profile.name!r}: acceleration"
    if acc.fp8 != "off":
        _check_fp8(where, device)
    if acc.video_encoder == "h264_nvenc":
        why = _encoder_unavailable("h264_nvenc") if device.startswith("cuda") else f"the engine runs on {device}"
        if why:
            raise ReelgenError(ErrorCode.INVALID_PROFILE, f"{where}.video_encoder 'h264_nvenc' cannot run here: {why}")


def _check_fp8(where: str, device: str) -> None:
    import importlib.util

    import torch

    if not device.startswith("cuda"):
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE,
            f"{where}.fp8 needs a CUDA GPU with compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            f'this engine runs on {device}. Set acceleration.fp8 = "off".',
        )
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < FP8_MIN_CAPABILITY:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE,
            f"{where}.fp8 needs compute capability 8.9 or newer; {device} has {capability[0]}.{capability[1]}. "
            'Set acceleration.fp8 = "off".',
        )
    if importlib.util.find_spec("torchao") is None:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE, f"{where}.fp8 = 'torchao' needs the torchao package: pip install 'reelgen[gpu]'"
        )


# -- FP8 ------------------------------------------------------------------------------------
def fp8_targets(transformer: Any) -> list[str]:
    """The names of the linear layers ``fp8 = "torchao"`` converts: every ``nn.Linear`` inside the
    transformer blocks except those of the first block and of the last ``5/48`` of the blocks, with
    both sides a multiple of 16 (float8 matrix multiplication's alignment)."""
    import torch

    layers = int(transformer.config.num_layers)
    kept_tail = math.ceil(layers * _FP8_KEPT_TAIL)
    converted = set(range(1, max(1, layers - kept_tail)))
    pattern = re.compile(r"transformer_blocks\.(\d+)\.")
    names = []
    for name, module in transformer.named_modules():
        match = pattern.match(name)
        if not (match and isinstance(module, torch.nn.Linear) and int(match.group(1)) in converted):
            continue
        if module.in_features % 16 == 0 and module.out_features % 16 == 0:
            names.append(name)
    return names


def apply_fp8(transformer: torch.nn.Module) -> int:
    """Convert ``fp8_targets(transformer)`` to torchao float8 layers; returns how many were converted."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    targets = set(fp8_targets(transformer))
    quantize_(
        transformer,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda _module, fqn: fqn in targets,
    )
    return len(targets)


# -- step cache -----------------------------------------------------------------------------
class StepCache:
    """The profile's step cache on one transformer, switched on for the stages that ask for it.

    Counts, per stage, the transformer calls the cache answered without running the blocks (each
    guidance row's call counts once); ``take`` hands the counts over and starts afresh."""

    def __init__(self, transformer: Any, acceleration: Acceleration) -> None:
        self.transformer = transformer
        self.acc = acceleration
        self._enabled = False
        self._stage = ""
        self._calls: dict[str, int] = {}
        self._full: dict[str, int] = {}
        if acceleration.step_cache != "off":
            # the transformer is called once per row group and step; the first block's attention only
            # when the blocks really run (the cache replaces the block's forward, not its call)
            transformer.register_forward_pre_hook(functools.partial(self._count, self._calls))
            first_attention = transformer.transformer_blocks[0].attn1
            first_attention.register_forward_pre_hook(functools.partial(self._count, self._full))

    def _count(self, counts: dict[str, int], _module: Any, _args: Any) -> None:
        counts[self._stage] = counts.get(self._stage, 0) + 1

    def begin(self, stage: Stage) -> None:
        """Before ``stage``: a fresh cache state, on or off as the plan says."""
        self._stage = stage.name
        if stage.step_cache and not self._enabled:
            self.transformer.enable_cache(self._config())
            self._enabled = True
        elif not stage.step_cache and self._enabled:
            self.transformer.disable_cache()
            self._enabled = False
        if self._enabled:
            self.transformer._reset_stateful_cache()

    def take(self) -> dict[str, int]:
        """Transformer calls answered from the cache, per stage, since the last ``take``."""
        skipped = {stage: calls - self._full.get(stage, 0) for stage, calls in self._calls.items()}
        self._calls.clear()
        self._full.clear()
        return {stage: n for stage, n in skipped.items() if n}

    def _config(self) -> Any:
        import torch
        from diffusers import TaylorSeerCacheConfig

        return TaylorSeerCacheConfig(  # type: ignore[no-untyped-call]
            cache_interval=self.acc.step_cache_interval,
            disable_cache_before_step=self.acc.step_cache_warmup,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            # the blocks return zeros on predicted steps; the video and audio output projections are
            # the ones predicted, so both modalities stay coherent
            skip_predict_identifiers=[r"transformer_blocks\.\d+"],
            cache_identifiers=[r"proj_out", r"audio_proj_out"],
        )


# -- VAE tiling -----------------------------------------------------------------------------
def decode_bytes(vae: Any, latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Estimated peak activation memory of decoding ``latent_shape`` untiled: the decoder's last
    stage works at ``1/patch_size`` of the output size with its narrowest channel count, over every
    frame at once."""
    import torch

    from reelgen.memory import decode_activation_bytes

    cfg = vae.config
    _b, _c, f, h, w = latent_shape
    frames = (f - 1) * int(cfg.temporal_compression_ratio) + 1
    patch = int(cfg.patch_size)
    height, width = h * int(cfg.spatial_compression_ratio), w * int(cfg.spatial_compression_ratio)
    factors = tuple(cfg.get("upsample_factor") or (1,))
    channels = int(next(iter(cfg.decoder_block_out_channels))) // int(factors[0])
    size = torch.empty((), dtype=dtype).element_size()
    return decode_activation_bytes(frames, height, width, channels=channels, patch=patch, size=size)


def use_vae_tiling(mode: str, vae: Any, latent_shape: tuple[int, ...], device: torch.device) -> bool:
    """Whether to decode ``latent_shape`` in tiles under ``vae_tiling = mode``."""
    import torch

    if mode != "auto":
        return mode == "on"
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return decode_bytes(vae, latent_shape, vae.dtype) > free * _DECODE_HEADROOM


# -- video encoder --------------------------------------------------------------------------
def pick_video_encoder(mode: str, device: str) -> str:
    """The H.264 encoder for ``video_encoder = mode`` on an engine running on ``device``."""
    if mode != "auto":
        return mode
    if device.startswith("cuda") and _encoder_unavailable("h264_nvenc") is None:
        return "h264_nvenc"
    return "libx264"


@functools.cache
def _encoder_unavailable(name: str) -> str | None:
    """Why FFmpeg cannot encode with ``name`` here (None when it can): opens it on one small frame."""
    import av
    import numpy as np

    if name not in av.codecs_available:
        return f"this FFmpeg build has no {name} encoder"
    try:
        ctx: Any = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 24)
        frame = av.VideoFrame.from_ndarray(np.zeros((256, 256, 3), dtype=np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        list(ctx.encode(frame))
        list(ctx.encode(None))
    except Exception as exc:  # FFmpeg says why (no driver, no device, unsupported GPU)
        return str(exc) or type(exc).__name__
    return None
