"""LTX-2 through diffusers: text→video, start-frame image→video, start+end keyframes, two-stage upsampling.

One ``LTX2Engine`` loads the weights once and serves many generations. All pipelines share the
same component objects (no weight is held twice):

* no image: ``LTX2Pipeline``; one start image: ``LTX2ImageToVideoPipeline``; a start and an end
  image: ``LTX2ConditionPipeline`` (keyframes at the first and the last latent frame);
* ``two_stage`` modes (professional): stage 1 at half the output size with the profile's guidance,
  ``LTX2LatentUpsamplePipeline`` doubles the latents, stage 2 re-noises them to
  ``stage2_sigmas[0]`` and refines at the output size with those sigmas, unguided (as the
  reference two-stage recipe does).

A segment runs as: text encoding → denoising steps (→ upsampling → stage-2 steps) → video VAE decode
→ audio VAE + vocoder (skipped when the job has no audio). The pipelines return latents; decoding
is done here so the audio decoder runs only when wanted and each stage can be timed. Progress is
reported after every denoising step; ``on_step`` returning False raises ``Cancelled`` from inside
the step callback, which stops the run at that step boundary. A generation is a pure function of
(weights, job, segment seed): every random draw comes from a generator seeded with the segment's seed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Cancelled, Clip, StepCallback
from reelgen.engines.tiny import lib
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from reelgen.domain import Job, Segment
    from reelgen.profiles import Profile

#: The stage-1 guidance the pipelines apply unless the profile says otherwise.
GUIDANCE_KEYS = (
    "guidance_scale",
    "audio_guidance_scale",
    "stg_scale",
    "audio_stg_scale",
    "modality_scale",
    "audio_modality_scale",
    "guidance_rescale",
    "audio_guidance_rescale",
)
#: Stage 2 refines without guidance: one transformer row per step.
UNGUIDED: dict[str, float] = {
    "guidance_scale": 1.0,
    "audio_guidance_scale": 1.0,
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    "guidance_rescale": 0.0,
    "audio_guidance_rescale": 0.0,
}
#: The transformer block perturbed by spatio-temporal guidance in the released model.
DEFAULT_STG_BLOCK = 28
LOAD_FORMATS = ("auto", "dummy")


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


def _is_local(weights: str) -> bool:
    return weights.startswith(("/", ".", "~")) or Path(weights).expanduser().exists()


@dataclass
class _Progress:
    """Counts denoising steps across the stages of one segment, times them, and relays cancellation."""

    total: int
    on_step: StepCallback | None
    timings: list[tuple[str, float]]
    #: waits for queued device work, so a step's time is the device's, not the launch's
    sync: Callable[[], None]
    done: int = 0
    stage: str = "stage1_step"
    mark: float | None = field(default=None)

    def start_stage(self, stage: str) -> None:
        self.stage, self.mark = stage, None

    def before_forward(self, *_: Any, **__: Any) -> None:
        # The first transformer forward of a stage starts its first step's clock.
        if self.mark is None:
            self.sync()
            self.mark = time.perf_counter()

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.sync()
        now = time.perf_counter()
        self.timings.append((self.stage, now - (self.mark if self.mark is not None else now)))
        self.mark = now
        self.done += 1
        if self.on_step is not None and self.on_step(self.done, self.total) is False:
            raise Cancelled()
        return {}


class LTX2Engine:
    """LTX-2 (video + audio) through diffusers; ``load_engine`` builds it from a profile."""

    def __init__(
        self,
        components: dict[str, Any],
        latent_upsampler: Any | None,
        *,
        device: str,
        random_weights: bool,
        source: str,
        stg_blocks: list[int] | None = None,
        offload_text_encoder: bool = False,
    ) -> None:
        import torch

        self.device = torch.device(device)
        #: keep the text encoder in host memory and bring it to the device only to encode prompts
        self.offload_text_encoder = offload_text_encoder
        self.dtype: torch.dtype = components["transformer"].dtype
        self.random_weights = random_weights
        self.source = source
        self._components = components
        self._upsampler = latent_upsampler
        layers = int(components["transformer"].config.num_layers)
        self.stg_blocks = stg_blocks or [DEFAULT_STG_BLOCK if layers > DEFAULT_STG_BLOCK else layers - 1]
        self.sample_rate = int(components["vocoder"].config.output_sampling_rate)
        self._pipes: dict[tuple[str, int], Any] = {}
        cuda = self.device.type == "cuda"
        self._sync: Callable[[], None] = (lambda: torch.cuda.synchronize(self.device)) if cuda else (lambda: None)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: Profile, device: str | None = None, load_format: str = "auto") -> LTX2Engine:
        """Tiny weights (``weights = "tiny"``), a diffusers directory or hub id, or ``load_format="dummy"``."""
        import torch

        if load_format not in LOAD_FORMATS:
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS, f"load format {load_format!r}: use one of {', '.join(LOAD_FORMATS)}"
            )
        dev = resolve_device(device)
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        needs_upsampler = any(spec.two_stage for spec in profile.modes.values())
        stg = profile.extra.get("stg_blocks")
        stg_blocks = [int(b) for b in stg] if isinstance(stg, list) else None
        offload = bool(profile.extra.get("offload_text_encoder", False)) and dev.startswith("cuda")
        opts: dict[str, Any] = {"stg_blocks": stg_blocks, "offload_text_encoder": offload}
        if profile.is_tiny:
            from reelgen.engines.tiny import build_tiny_components, build_tiny_latent_upsampler

            comps = build_tiny_components()
            up = build_tiny_latent_upsampler() if needs_upsampler else None
            for module in [*comps.values(), up]:
                if isinstance(module, torch.nn.Module):
                    module.to(device=dev).eval()
                    if dtype != torch.float32:
                        module.to(dtype=dtype)
            return cls(comps, up, device=dev, random_weights=True, source="tiny", **opts)
        if load_format == "dummy":
            from reelgen.engines.tiny import build_dummy_components, build_dummy_latent_upsampler

            _check_dummy_fits(dev, dtype, offload)
            comps = build_dummy_components(dev, dtype, text_encoder_device="cpu" if offload else None)
            up = build_dummy_latent_upsampler(dev, dtype) if needs_upsampler else None
            comps["vae"].enable_tiling()
            return cls(comps, up, device=dev, random_weights=True, source="dummy", **opts)
        comps, up = _load_pretrained(profile, dtype, needs_upsampler)
        for name, module in [*comps.items(), ("latent_upsampler", up)]:
            if isinstance(module, torch.nn.Module) and not (offload and name == "text_encoder"):
                module.to(dev)
        # Full-size decoding in spatial tiles (512 px, blended): without it a 1080p clip's VAE decode
        # needs far more memory than the denoiser (the reference two-stage recipe does the same).
        comps["vae"].enable_tiling()
        return cls(comps, up, device=dev, random_weights=False, source=profile.weights, **opts)

    def _pipeline(self, kind: str, stage: int) -> Any:
        """The pipeline for ``kind`` (t2v / i2v / keyframes / upsample) and stage, built once, sharing components."""
        key = (kind, stage)
        if key not in self._pipes:
            diffusers = lib("diffusers")
            pipe: Any
            if kind == "upsample":
                vae = self._components["vae"]
                pipe = diffusers.LTX2LatentUpsamplePipeline(vae=vae, latent_upsampler=self._upsampler)
            else:
                name = {"t2v": "LTX2Pipeline", "i2v": "LTX2ImageToVideoPipeline", "keyframes": "LTX2ConditionPipeline"}
                cls = getattr(diffusers, name[kind])
                comps = dict(self._components)
                if stage == 2:
                    # Stage 2 uses its sigmas as given: no resolution-dependent shift.
                    comps["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
                        comps["scheduler"].config, use_dynamic_shifting=False, shift_terminal=None
                    )
                accepted = inspect.signature(cls.__init__).parameters
                pipe = cls(**{k: v for k, v in comps.items() if k in accepted})
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
        return self._pipes[key]

    # -- generation -------------------------------------------------------------------------
    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        """Generate ``segment`` of ``job`` (its start image conditions the first segment, its end image the last)."""
        import torch

        index = self._check(job, segment)
        start = job.start_image if index == 0 else None
        end = job.end_image if index == len(job.segments) - 1 else None
        timings: list[tuple[str, float]] = []
        total = job.steps + (len(job.stage2_sigmas) if job.two_stage else 0)
        progress = _Progress(total=total, on_step=on_step, timings=timings, sync=self._sync)
        hook = self._components["transformer"].register_forward_pre_hook(progress.before_forward)
        try:
            with torch.no_grad():
                video, audio = self._denoise(job, segment, start, end, progress)
                frames = self._timed(timings, "vae_decode", lambda: self._decode_video(video))
                sound = self._timed(timings, "audio_decode", lambda: self._decode_audio(audio)) if job.audio else None
        except torch.cuda.OutOfMemoryError as exc:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, f"out of GPU memory on {self.device}: {exc}") from None
        finally:
            hook.remove()
        keep = segment.seconds * job.fps
        want_samples = segment.seconds * self.sample_rate
        return Clip(
            frames=frames[:keep],
            fps=job.fps,
            audio=_fit_samples(sound, want_samples) if sound is not None else None,
            sample_rate=self.sample_rate if sound is not None else None,
            timings=timings,
        )

    def _check(self, job: Job, segment: Segment) -> int:
        """Check the request before any work; returns the segment's index in the job."""
        index = next((i for i, s in enumerate(job.segments) if s is segment), None)
        if index is None:
            index = next((i for i, s in enumerate(job.segments) if s == segment), None)
        if index is None:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"segment {segment.prompt[:40]!r} is not part of the job")
        if segment.seconds < 1:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"a shot must last at least 1 s (got {segment.seconds} s)")
        multiple = 64 if job.two_stage else 32
        if job.width <= 0 or job.height <= 0 or job.width % multiple or job.height % multiple:
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"size {job.width}x{job.height}: each side must be a positive multiple of {multiple}",
            )
        if job.fps <= 0:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"fps {job.fps} must be positive")
        if segment.num_frames % 8 != 1 or segment.num_frames < segment.seconds * job.fps + 1:
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"num_frames {segment.num_frames} must be 8k+1 and cover {segment.seconds} s at {job.fps} fps",
            )
        if job.steps < 1:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"steps {job.steps} must be at least 1")
        unknown = sorted(set(job.guidance) - set(GUIDANCE_KEYS))
        if unknown:
            raise ReelgenError(
                ErrorCode.INVALID_PROFILE, f"unknown guidance key(s) {unknown}; known: {', '.join(GUIDANCE_KEYS)}"
            )
        if job.two_stage:
            if not job.stage2_sigmas:
                raise ReelgenError(ErrorCode.INVALID_PROFILE, "two-stage mode without stage2_sigmas")
            if self._upsampler is None:
                raise ReelgenError(ErrorCode.INVALID_PROFILE, "two-stage mode but no latent upsampler is loaded")
        if job.end_image is not None and job.start_image is None:
            raise ReelgenError(ErrorCode.INVALID_INPUT, "an end image needs a start image")
        return index

    def _timed(self, timings: list[tuple[str, float]], name: str, fn: Callable[[], Any]) -> Any:
        self._sync()
        t0 = time.perf_counter()
        result = fn()
        self._sync()
        timings.append((name, time.perf_counter() - t0))
        return result

    def _encode(self, prompt: str, job: Job, guidance: dict[str, float]) -> dict[str, Any]:
        pipe = self._pipeline("t2v", 1)
        gs = guidance["guidance_scale"]
        cfg = gs > 1.0 or (guidance["audio_guidance_scale"] or gs) > 1.0
        text_encoder = self._components["text_encoder"]
        if self.offload_text_encoder:
            text_encoder.to(self.device)
        try:
            pe, pm, ne, nm = pipe.encode_prompt(
                prompt=prompt,
                negative_prompt=job.negative_prompt,
                do_classifier_free_guidance=cfg,
                max_sequence_length=job.max_sequence_length,
                device=self.device,
            )
        finally:
            if self.offload_text_encoder:
                text_encoder.to("cpu")
        embeds = {"prompt_embeds": pe, "prompt_attention_mask": pm}
        if cfg:
            embeds |= {"negative_prompt_embeds": ne, "negative_prompt_attention_mask": nm}
        return embeds

    def _denoise(
        self, job: Job, segment: Segment, start: Image.Image | None, end: Image.Image | None, progress: _Progress
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        # An end frame (alone: the last shot of a multi-shot job) needs the keyframe pipeline.
        kind = "keyframes" if end is not None else "i2v" if start is not None else "t2v"
        guidance = {k: float(v) for k, v in UNGUIDED.items()}
        guidance |= {"guidance_rescale": 0.7, "audio_guidance_rescale": 0.7}  # the pipelines' defaults
        guidance |= job.guidance
        timings = progress.timings
        embeds = self._timed(timings, "text_encoding", lambda: self._encode(segment.prompt, job, guidance))
        stg = guidance["stg_scale"] > 0 or guidance["audio_stg_scale"] > 0
        width, height = (job.width // 2, job.height // 2) if job.two_stage else (job.width, job.height)

        def generator() -> torch.Generator:
            return torch.Generator(device=self.device).manual_seed(segment.seed)

        common: dict[str, Any] = {
            "num_frames": segment.num_frames,
            "frame_rate": float(job.fps),
            "generator": generator(),
            "output_type": "latent",
            "return_dict": False,
            "callback_on_step_end": progress,
            "max_sequence_length": job.max_sequence_length,
        }
        progress.start_stage("stage1_step")
        video, audio = self._pipeline(kind, 1)(
            **embeds,
            **common,
            **guidance,
            **_images(kind, start, end, width, height),
            height=height,
            width=width,
            num_inference_steps=job.steps,
            spatio_temporal_guidance_blocks=self.stg_blocks if stg else None,
        )
        if not job.two_stage:
            return video, audio
        upsample = self._pipeline("upsample", 1)
        video = self._timed(
            timings,
            "upsample",
            lambda: upsample(latents=video, latents_normalized=False, output_type="latent", return_dict=False)[0],
        )
        sigmas = list(job.stage2_sigmas)
        stage2_embeds = {k: v for k, v in embeds.items() if not k.startswith("negative")}
        progress.start_stage("stage2_step")
        return self._pipeline(kind, 2)(  # type: ignore[no-any-return]
            **stage2_embeds,
            **{**common, "generator": generator()},
            **UNGUIDED,
            **_images(kind, start, end, job.width, job.height),
            height=job.height,
            width=job.width,
            latents=video,
            audio_latents=audio,
            sigmas=sigmas,
            num_inference_steps=len(sigmas),
            noise_scale=sigmas[0],
            spatio_temporal_guidance_blocks=None,
        )

    def _decode_video(self, latents: torch.Tensor) -> np.ndarray:
        """Denormalised video latents → ``uint8`` frames ``(frames, height, width, 3)``."""
        import torch

        vae = self._components["vae"]
        latents = latents.to(device=self.device, dtype=vae.dtype)
        temb = None
        if vae.config.timestep_conditioning:  # decode at timestep 0 with no added noise (the pipeline default)
            temb = torch.zeros(latents.shape[0], device=self.device, dtype=latents.dtype)
        video = vae.decode(latents, temb, return_dict=False)[0][0]  # (C, F, H, W) in [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # type: ignore[no-any-return]

    def _decode_audio(self, latents: torch.Tensor) -> np.ndarray:
        """Audio latents → ``float32`` waveform ``(channels, samples)`` at ``sample_rate``."""
        audio_vae, vocoder = self._components["audio_vae"], self._components["vocoder"]
        mel = audio_vae.decode(latents.to(device=self.device, dtype=audio_vae.dtype), return_dict=False)[0]
        wave = vocoder(mel.to(vocoder.dtype))[0]
        return wave.float().cpu().numpy()  # type: ignore[no-any-return]


def _check_dummy_fits(device: str, dtype: torch.dtype, offload_text_encoder: bool) -> None:
    """Refuse a full-size dummy build that cannot fit, before allocating tens of GB."""
    import os

    import torch

    from reelgen.engines.tiny import build_dummy_components, build_dummy_latent_upsampler

    size = torch.empty((), dtype=dtype).element_size()
    comps = build_dummy_components("meta", dtype)  # shapes only, no memory
    counts = {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items() if isinstance(v, torch.nn.Module)}
    counts["latent_upsampler"] = sum(p.numel() for p in build_dummy_latent_upsampler("meta", dtype).parameters())
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


def _images(kind: str, start: Image.Image | None, end: Image.Image | None, width: int, height: int) -> dict[str, Any]:
    """Pipeline arguments carrying the conditioning images, fitted to ``width`` x ``height``."""
    from reelgen.inputs import fit_image

    def fit(img: Image.Image) -> Image.Image:
        return img if img.size == (width, height) else fit_image(img, width, height)

    if kind == "i2v" and start is not None:
        return {"image": fit(start)}
    if kind != "keyframes":
        return {}
    condition = lib("diffusers.pipelines.ltx2.pipeline_ltx2_condition").LTX2VideoCondition
    # Indices are latent frames: 0 is the first frame, -1 the last.
    keyframes = [(img, index) for img, index in ((start, 0), (end, -1)) if img is not None]
    return {"conditions": [condition(frames=fit(img), index=index, strength=1.0) for img, index in keyframes]}


def _fit_samples(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim ``audio`` to exactly ``samples``, or pad it with silence."""
    import numpy as np

    if audio.shape[-1] >= samples:
        return np.ascontiguousarray(audio[..., :samples], dtype=np.float32)
    pad = np.zeros((*audio.shape[:-1], samples - audio.shape[-1]), dtype=np.float32)
    return np.concatenate([audio.astype(np.float32), pad], axis=-1)


def _load_pretrained(profile: Profile, dtype: torch.dtype, needs_upsampler: bool) -> tuple[dict[str, Any], Any]:
    """Components from a diffusers-layout directory or hub id, plus the latent upsampler."""
    weights = profile.weights
    local = _is_local(weights)
    root = Path(weights).expanduser()
    if local and not (root / "model_index.json").is_file():
        raise ReelgenError(
            ErrorCode.WEIGHTS_NOT_FOUND,
            f"weights {weights!r}: expected a diffusers-layout directory with model_index.json "
            "(transformer/, vae/, audio_vae/, vocoder/, connectors/, text_encoder/, tokenizer/, scheduler/)",
        )
    try:
        pipe = lib("diffusers").LTX2Pipeline.from_pretrained(str(root) if local else weights, dtype=dtype)
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
    if _is_local(name):
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
