"""The worker's memory model: how much GPU memory one generation needs, estimated from the profile
and the request alone (no torch, no GPU), so a request that can never fit the profile's
``max_memory_gib`` is refused at submit instead of running into an out-of-memory error.

The estimate is deliberately simple and documented in docs/engine.md ("Memory-aware admission"):

* resident weights: the generation's bf16 parameter counts (counted on the meta device; the text
  encoder is left out with ``offload_text_encoder``); tiny profiles' weights count as nothing;
* LoRAs: the profile's stage LoRAs and the request's LoRAs, each at its ``memory_gib`` or, unstated,
  at the size of the generation's rank-384 distilled LoRA (an upper bound for the published ones);
* activations of the largest denoising call: video + audio tokens x the transformer's width x
  ``_ACTIVATION_FACTOR`` bf16 values per token, times the guidance rows the stage batches;
* the video decode: the decoder's last stage (128 channels at 1/4 of the output size over every
  frame, six live copies, as ``reelgen.engines.acceleration.decode_bytes``) untiled when
  ``vae_tiling = "off"``, else at most one 512-px, 24-frame tile of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reelgen.continuity import lead_frames
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.planning import model_frames, request_loras
from reelgen.schemas import AspectRatio, GenerateInput

if TYPE_CHECKING:
    from reelgen.profiles import Profile

GIB = 2**30
BF16 = 2
#: bf16 parameters (billions) per generation, counted on the meta device (docs/engine.md)
PARAMS: dict[str, dict[str, float]] = {
    "2.0": {
        "transformer": 18.88,
        "text_encoder": 12.19,
        "connectors": 1.43,
        "vae": 1.22,
        "latent_upsampler": 0.50,
        "audio": 0.11,
    },
    "2.3": {
        "transformer": 18.99,
        "text_encoder": 12.19,
        "connectors": 3.17,
        "vae": 0.73,
        "latent_upsampler": 0.50,
        "audio": 0.11,
    },
}
PARAMS["2.5"] = PARAMS["2.3"]
#: the rank-384 (2.5: 450) distilled LoRA's parameters (billions): the size an unstated LoRA counts at
DISTILLED_LORA = {"2.0": 3.70, "2.3": 4.04, "2.5": 4.04}
HIDDEN = 4096
#: bf16 values alive per token during a transformer block (the 4x feed-forward expansion, residual,
#: attention inputs and outputs): an upper bound read off the block's layers
_ACTIVATION_FACTOR = 8
#: latent tokens: the VAE compresses 32x in space and 8x in time; audio runs 25 latent frames a second
_SPATIAL, _TEMPORAL, _AUDIO_PER_SECOND = 32, 8, 25
_DECODE_CHANNELS, _PATCH = 128, 4
#: live activations of the video decoder's last (widest) stage, in copies of one activation: the
#: input, the convolution's output, the normalised copy and the residual, with room for padding copies
DECODE_COPIES = 6
_TILE_SIDE, _TILE_FRAMES = 512, 24


@dataclass(frozen=True)
class Estimate:
    """Bytes one generation needs on the GPU, by part."""

    weights: int
    loras: int
    activations: int
    decode: int

    @property
    def total(self) -> int:
        return self.weights + self.loras + self.activations + self.decode


def _lora_bytes(profile: Profile, name: str) -> int:
    spec = profile.loras[name]
    if spec.is_tiny:
        return 0
    gib = spec.memory_gib
    return int(gib * GIB) if gib is not None else int(DISTILLED_LORA[profile.generation] * 1e9 * BF16)


def estimate(inp: GenerateInput, profile: Profile) -> Estimate:
    """The memory model's estimate for ``inp`` on ``profile`` (the largest shot and stage)."""
    spec = profile.mode(inp.mode)
    # image-to-video takes the ratio of its start frame, unknown before the image is fetched: the largest
    aspects = list(AspectRatio) if inp.image_urls else [AspectRatio(inp.aspect_ratio or "16:9")]
    w, h = max((spec.generation_size(a) for a in aspects), key=lambda s: s[0] * s[1])
    shots = [s.duration for s in inp.multi_prompt or ()] if inp.multi_shots else []
    longest = max(shots, default=inp.duration)
    # a later shot's continuity (any shot may be the longest): the previous shot's frames generated
    # again (continue), or one latent frame of keyframe tokens (same_subject)
    continuity = inp.multi_shot_continuity if len(shots) > 1 else None
    frames = model_frames(longest, profile.fps, lead_frames(continuity, 1))
    latent_frames = (frames - 1) // _TEMPORAL + 1 + int(continuity == "same_subject")
    weights = 0
    if not profile.is_tiny:
        params = dict(PARAMS[profile.generation])
        if profile.extra.get("offload_text_encoder", False):
            params.pop("text_encoder")
        weights = int(sum(params.values()) * 1e9 * BF16)
    pinned = {n for st in spec.stages for n, _ in st.loras}
    names = pinned | {n for n, _ in request_loras(inp, profile)}
    loras = sum(_lora_bytes(profile, n) for n in names)
    activations = 0
    for k, stage in enumerate(spec.stages):
        half = spec.two_stage and k == 0
        sw, sh = (w // 2, h // 2) if half else (w, h)
        tokens = latent_frames * math.ceil(sh / _SPATIAL) * math.ceil(sw / _SPATIAL) + longest * _AUDIO_PER_SECOND
        g = stage.full_guidance()
        rows = 1 + (g["guidance_scale"] > 1) + (g["stg_scale"] > 0) + (g["modality_scale"] > 1)
        activations = max(activations, rows * tokens * HIDDEN * _ACTIVATION_FACTOR * BF16)
    untiled = decode_activation_bytes(frames, h, w)
    tiled = decode_activation_bytes(min(frames, _TILE_FRAMES), min(h, _TILE_SIDE), min(w, _TILE_SIDE))
    decode = untiled if profile.acceleration.vae_tiling == "off" else min(untiled, tiled)
    return Estimate(weights=weights, loras=loras, activations=activations, decode=decode)


def check_fits(inp: GenerateInput, profile: Profile) -> Estimate:
    """The estimate, or ``INVALID_INPUT`` when it exceeds the profile's ``max_memory_gib``."""
    est = estimate(inp, profile)
    limit = profile.max_memory_gib
    if limit is not None and est.total > limit * GIB:
        parts = (
            f"weights {est.weights / GIB:.1f}, LoRAs {est.loras / GIB:.1f}, "
            f"activations {est.activations / GIB:.2f}, video decode {est.decode / GIB:.2f} GiB"
        )
        message = (
            f"this request needs an estimated {est.total / GIB:.2f} GiB of GPU memory ({parts}) but this "
            f"server's workers have {limit:g} GiB; use a shorter duration or shot, the standard mode, "
            "or fewer LoRAs"
        )
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"Invalid input: {message}",
            details=[{"field": "input", "message": message}],
        )
    return est


def decode_activation_bytes(
    frames: int, height: int, width: int, *, channels: int = _DECODE_CHANNELS, patch: int = _PATCH, size: int = BF16
) -> int:
    """Peak activation bytes of decoding ``frames`` x ``height`` x ``width`` pixels at once: the
    decoder's last stage, ``channels`` wide at ``1/patch`` of the size, ``DECODE_COPIES`` live copies
    of ``size``-byte values (``reelgen.engines.acceleration.decode_bytes`` reads them off a VAE)."""
    return frames * (height // patch) * (width // patch) * channels * size * DECODE_COPIES
