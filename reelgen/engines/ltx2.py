"""LTX-2 through diffusers: every stage of a planned segment, exactly as ``reelgen.planning`` lays it out.

One ``LTX2Engine`` loads the weights (and the profile's LoRAs) once and serves many generations. The
pipelines share one set of component objects (no weight is held twice):

* ``LTX2Pipeline`` for text only; ``PixelFrameConditionPipeline`` (``LTX2ConditionPipeline`` with
  keyframes placed by pixel frame, as the reference does) when a stage has image conditions: the
  start image replaces the first latent frame, the end image conditions the last frame kept;
* with a stage 2, ``LTX2LatentUpsamplePipeline`` doubles stage 1's latents and stage 2 re-noises them
  to its first sigma and refines at the generation size, re-conditioned on the images at that size.

Every stage runs its plan's sigmas as given: the pipelines get a scheduler without any shift of its
own (no token-count shift, no terminal stretch). One ``torch.Generator``, seeded with the segment's
seed, feeds every random draw of every stage, so a generation is a pure function of (weights, plan).
The stage's LoRAs are switched in before it runs (``Adapters.activate``); the prompt is encoded once,
with stage 1's adapters, and reused by stage 2 (as the reference does).

A segment runs as: text encoding → stage 1 steps (→ upsampling → stage 2 steps) → video VAE decode
→ audio VAE + vocoder (skipped when the job has no audio) → centre crop to the output size. The
pipelines return latents; decoding is done here so the audio decoder runs only when wanted and each
stage can be timed. Progress is reported after every denoising step; ``on_step`` returning False
raises ``Cancelled`` from inside the step callback, which stops the run at that step boundary. Live
previews ride on the same callback (``reelgen.engines.preview``) and never change the output.

One module over 400 lines on purpose: loading, acceleration and every stage's pipeline call share the one
set of components and the plan's reading; the parts that stand alone live beside it (conditions, lora,
acceleration, preview, enhancer, sequence).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Clip, StepCallback, check_segment
from reelgen.engines.clock import StepClock
from reelgen.engines.tiny import lib
from reelgen.engines.weights import LOAD_FORMATS, check_dummy_fits, load_pretrained, resolve_device
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.planning import CONDITION_PIPELINE, TEXT_PIPELINE

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from reelgen.engines.enhancer import PromptEnhancer
    from reelgen.engines.lora import Adapters
    from reelgen.engines.preview import PreviewTap
    from reelgen.livepreview import Previews, PreviewSink
    from reelgen.planning import Job, Segment, Stage
    from reelgen.profiles import Profile


#: graphs per compiled block: modes x stages x guidance rows x a few durations (see ``accelerate``)
_RECOMPILE_LIMIT = 64


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
        profile: Profile | None = None,
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
        self.num_layers = int(components["transformer"].config.num_layers)
        self.sample_rate = int(components["vocoder"].config.output_sampling_rate)
        self._pipes: dict[str, Any] = {}
        cuda = self.device.type == "cuda"
        self._sync: Callable[[], None] = (lambda: torch.cuda.synchronize(self.device)) if cuda else (lambda: None)
        from reelgen.engines.lora import Adapters

        self.adapters: Adapters = Adapters(self._pipeline(TEXT_PIPELINE), profile, random_full_size=source == "dummy")
        from reelgen.engines.acceleration import StepCache, pick_video_encoder
        from reelgen.profiles import Acceleration

        self.acceleration = profile.acceleration if profile is not None else Acceleration()
        self.step_cache = StepCache(components["transformer"], self.acceleration)
        #: the H.264 encoder for this engine's clips (``reelgen.generation.render`` uses it)
        self.video_encoder = pick_video_encoder(self.acceleration.video_encoder, str(self.device))
        self.enhancer: PromptEnhancer | None = None
        if profile is not None and profile.prompt_enhancement is not None:
            from reelgen.engines.enhancer import PromptEnhancer

            self.enhancer = PromptEnhancer(
                profile.prompt_enhancement,
                components,
                device=self.device,
                dtype=self.dtype,
                source=source,
                offload=offload_text_encoder,
            )

    @property
    def transformer(self) -> Any:
        """The denoiser (``reelgen.engines.parallel`` shares its work across a device group)."""
        return self._components["transformer"]

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: Profile, device: str | None = None, load_format: str = "auto") -> LTX2Engine:
        """Tiny weights (``weights = "tiny"``), a diffusers directory or hub id, or ``load_format="dummy"``."""
        import torch

        from reelgen.engines.acceleration import check_acceleration
        from reelgen.engines.weights import check_profile

        if load_format not in LOAD_FORMATS:
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS, f"load format {load_format!r}: use one of {', '.join(LOAD_FORMATS)}"
            )
        dev = resolve_device(device)
        check_acceleration(profile, dev)
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        needs_upsampler = any(spec.two_stage for spec in profile.modes.values())
        offload = bool(profile.extra.get("offload_text_encoder", False)) and dev.startswith("cuda")
        opts: dict[str, Any] = {"profile": profile, "offload_text_encoder": offload}
        if profile.is_tiny:
            from reelgen.engines.tiny import build_tiny_components, build_tiny_latent_upsampler

            comps = build_tiny_components(generation=profile.generation)
            check_profile(profile, load_format, modules=comps)
            up = build_tiny_latent_upsampler() if needs_upsampler else None
            for module in [*comps.values(), up]:
                if isinstance(module, torch.nn.Module):
                    module.to(device=dev).eval()
                    if dtype != torch.float32:
                        module.to(dtype=dtype)
            return cls(comps, up, device=dev, random_weights=True, source="tiny", **opts).accelerate(profile)
        if load_format == "dummy":
            from reelgen.engines.architectures import build_dummy_components, build_dummy_latent_upsampler

            check_profile(profile, load_format)
            check_dummy_fits(dev, dtype, offload, profile.generation)
            comps = build_dummy_components(
                dev, dtype, generation=profile.generation, text_encoder_device="cpu" if offload else None
            )
            up = build_dummy_latent_upsampler(dev, dtype, generation=profile.generation) if needs_upsampler else None
            return cls(comps, up, device=dev, random_weights=True, source="dummy", **opts).accelerate(profile)
        check_profile(profile, load_format)
        comps, up = load_pretrained(profile, dtype, needs_upsampler)
        for name, module in [*comps.items(), ("latent_upsampler", up)]:
            if isinstance(module, torch.nn.Module) and not (offload and name == "text_encoder"):
                module.to(dev)
        return cls(comps, up, device=dev, random_weights=False, source=profile.weights, **opts).accelerate(profile)

    def accelerate(self, profile: Profile) -> LTX2Engine:
        """Apply the profile's acceleration switches (``reelgen.engines.acceleration``): the attention
        backend, FP8 layers, then with ``compile = "regional"`` the repeated transformer blocks are
        compiled and warmed now, with one generation per mode (16:9, the shortest duration), so the
        first task does not pay for compilation. Other shapes compile on their first use (torch marks a
        dimension dynamic once it has seen two sizes of it)."""
        from reelgen.engines.acceleration import apply_fp8
        from reelgen.engines.weights import set_attention_backend
        from reelgen.planning import plan
        from reelgen.schemas import GenerateInput

        set_attention_backend(profile, self._components["transformer"])
        if profile.acceleration.fp8 != "off":
            apply_fp8(self._components["transformer"])
        if profile.acceleration.compile == "regional":
            import torch

            # One block's code serves every block and every call: each guidance row (its batch, STG's
            # perturbed block, modality guidance's cross-attention switches) and each stage size is a
            # graph of its own, more than dynamo's default of 8 per code object (then fullgraph fails).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
            self._components["transformer"].compile_repeated_blocks(fullgraph=True)
            for mode in profile.modes:
                job = plan(GenerateInput(prompt="warm-up", duration=profile.min_duration, mode=mode), profile, seed=0)
                self.generate(job, job.segments[0])
        return self

    def _pipeline(self, kind: str) -> Any:
        """The pipeline named by a stage (or ``upsample``), built once, sharing the components."""
        if kind not in self._pipes:
            diffusers = lib("diffusers")
            pipe: Any
            if kind == "upsample":
                vae = self._components["vae"]
                pipe = diffusers.LTX2LatentUpsamplePipeline(vae=vae, latent_upsampler=self._upsampler)
            else:
                if kind == TEXT_PIPELINE:
                    cls = diffusers.LTX2Pipeline
                elif kind == CONDITION_PIPELINE:
                    cls = lib("reelgen.engines.conditions").PixelFrameConditionPipeline
                else:
                    raise ReelgenError(ErrorCode.INVALID_PROFILE, f"unknown stage pipeline {kind!r}")
                comps = dict(self._components)
                # The plan's sigmas run as given: no token-count shift, no terminal stretch.
                comps["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
                    comps["scheduler"].config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
                )
                accepted = inspect.signature(cls.__init__).parameters
                pipe = cls(**{k: v for k, v in comps.items() if k in accepted})
            pipe.set_progress_bar_config(disable=True)
            self._pipes[kind] = pipe
        return self._pipes[kind]

    # -- generation -------------------------------------------------------------------------
    def enhance_prompt(self, job: Job, segment: Segment, should_stop: Callable[[], bool] | None = None) -> str:
        """The profile's enhancer's rewrite of ``segment``'s prompt (``reelgen.engines.enhancer``)."""
        if self.enhancer is None:
            raise ReelgenError(ErrorCode.PROMPT_ENHANCEMENT_FAILED, "This engine's profile has no prompt enhancer.")
        return self.enhancer.enhance(job, segment, should_stop)

    def generate(
        self,
        job: Job,
        segment: Segment,
        on_step: StepCallback | None = None,
        *,
        previews: Previews | None = None,
        on_preview: PreviewSink | None = None,
    ) -> Clip:
        """Generate ``segment`` of ``job``: its stages as planned, decoded and centre-cropped to the output.

        With ``previews`` and ``on_preview``: live previews at the steps ``previews`` asks for
        (``reelgen.engines.preview``), handed to ``on_preview`` on this thread; the clip is the same."""
        import torch

        check_segment(job, segment, num_layers=self.num_layers, has_upsampler=self._upsampler is not None)
        timings: list[tuple[str, float]] = []
        tap = None
        if previews is not None and on_preview is not None:
            from reelgen.engines.preview import PreviewTap

            tap = PreviewTap(previews, on_preview, self._components["vae"], job, segment, timings=timings)
        progress = StepClock(
            total=segment.steps, on_step=on_step, timings=timings, cuda=self.device.type == "cuda", tap=tap
        )
        hook = self._components["transformer"].register_forward_pre_hook(progress.before_forward, with_kwargs=True)
        try:
            with torch.no_grad():
                video, audio = self._denoise(job, segment, progress, tap)
                frames = self._timed(timings, "vae_decode", lambda: self._decode_video(video))
                sound = self._timed(timings, "audio_decode", lambda: self._decode_audio(audio)) if job.audio else None
            progress.finish()
        except torch.cuda.OutOfMemoryError as exc:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, f"out of GPU memory on {self.device}: {exc}") from None
        finally:
            hook.remove()
        from reelgen.media import fit_samples

        # a segment's lead frames are the ones it continues (``Segment.lead_frames``): kept out, with
        # their sound returned apart for the joint
        lead, keep = segment.lead_frames, segment.seconds * job.fps
        lead_samples = lead * self.sample_rate // job.fps
        want_samples = segment.seconds * self.sample_rate
        return Clip(
            frames=_centre_crop(frames[lead : lead + keep], job.width, job.height),
            fps=job.fps,
            audio=fit_samples(sound[..., lead_samples:], want_samples) if sound is not None else None,
            sample_rate=self.sample_rate if sound is not None else None,
            timings=timings,
            rows=progress.rows,
            cached=self.step_cache.take(),
            lead_audio=sound[..., :lead_samples].astype("float32") if sound is not None and lead else None,
        )

    def _timed(self, timings: list[tuple[str, float]], name: str, fn: Callable[[], Any]) -> Any:
        self._sync()
        t0 = time.perf_counter()
        result = fn()
        self._sync()
        timings.append((name, time.perf_counter() - t0))
        return result

    def _encode(self, segment: Segment, guided: bool, max_sequence_length: int) -> dict[str, Any]:
        pipe = self._pipeline(TEXT_PIPELINE)
        text_encoder = self._components["text_encoder"]
        if self.offload_text_encoder:
            text_encoder.to(self.device)
        try:
            pe, pm, ne, nm = pipe.encode_prompt(
                prompt=segment.prompt,
                negative_prompt=segment.negative_prompt or "",
                do_classifier_free_guidance=guided,
                max_sequence_length=max_sequence_length,
                device=self.device,
            )
        finally:
            if self.offload_text_encoder:
                text_encoder.to("cpu")
        embeds = {"prompt_embeds": pe, "prompt_attention_mask": pm}
        if guided:
            embeds |= {"negative_prompt_embeds": ne, "negative_prompt_attention_mask": nm}
        return embeds

    def _denoise(
        self, job: Job, segment: Segment, progress: StepClock, tap: PreviewTap | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        timings = progress.timings
        guided = any(stage.guided for stage in segment.stages)
        self.adapters.activate(segment.stages[0].loras)
        embeds = self._timed(timings, "text_encoding", lambda: self._encode(segment, guided, job.max_sequence_length))
        # One generator for every draw of every stage, as the reference pipelines do.
        generator = torch.Generator(device=self.device).manual_seed(segment.seed)
        video: Any = None
        audio: Any = None
        tail = self._audio_tail(job, segment)
        for stage in segment.stages:
            self.adapters.activate(stage.loras)
            self.step_cache.begin(stage)
            if stage.upsample:
                video = self._timed(timings, "upsample", functools.partial(self._upsample, video))
            progress.start_stage(f"{stage.name}_step")
            if tap is not None:
                tap.start_stage(stage)
            call: dict[str, Any] = {
                **(embeds if stage.guided else {k: v for k, v in embeds.items() if not k.startswith("negative")}),
                **stage.guidance,
                "num_frames": stage.frames,
                "frame_rate": float(job.fps),
                "height": stage.height,
                "width": stage.width,
                "sigmas": list(stage.sigmas),
                "num_inference_steps": stage.steps,
                "generator": generator,
                "output_type": "latent",
                "return_dict": False,
                "callback_on_step_end": progress,
                "max_sequence_length": job.max_sequence_length,
            }
            if stage.upsample:
                call |= {"latents": video, "audio_latents": audio, "noise_scale": stage.sigmas[0]}
            if stage.conditions:
                call["conditions"] = self._conditions(job, segment, stage)
            pipe = self._pipeline(stage.pipeline)
            if tail is not None:  # the sound under the lead frames (``audio_condition``)
                scheduler = lib("reelgen.engines.audio_condition").tail_scheduler(pipe, tail, generator, self.device)
                object.__setattr__(pipe, "audio_scheduler", scheduler)  # not a registered component change
            try:
                video, audio = pipe(**call)
            finally:
                if tail is not None:
                    object.__setattr__(pipe, "audio_scheduler", None)
        return video, audio

    def _audio_tail(self, job: Job, segment: Segment) -> torch.Tensor | None:
        """The latents of the sound under the segment's lead frames (``Job.previous_audio``, set by the
        extend model; ``audio_condition.encode_tail``), or None when there is nothing to condition the
        sound on."""
        if not (job.audio and segment.lead_frames and job.previous_audio is not None and job.previous_audio_rate):
            return None
        cond = lib("reelgen.engines.audio_condition")
        vae = self._components["audio_vae"]
        tokens = int(segment.lead_frames / job.fps * cond.latents_per_second(vae))
        if tokens < 1:
            return None
        return cond.encode_tail(vae, job.previous_audio, job.previous_audio_rate, tokens, self.device)  # type: ignore[no-any-return]

    def _upsample(self, video: torch.Tensor) -> torch.Tensor:
        """Stage 1's (denormalised) video latents doubled in width and height by the latent upsampler."""
        upsample = self._pipeline("upsample")
        return upsample(latents=video, latents_normalized=False, output_type="latent", return_dict=False)[0]  # type: ignore[no-any-return]

    def _conditions(self, job: Job, segment: Segment, stage: Stage) -> list[Any]:
        """The stage's conditions: images (or the frames the segment continues, ``Job.pictures``) at
        the generation size, at their pixel frames."""
        conditions = lib("reelgen.engines.conditions")
        last = segment.stages[-1]
        out = []
        for c in stage.conditions:
            padded = [
                conditions.pad_to(
                    image if image.size == (job.width, job.height) else _fit(image, job.width, job.height),
                    last.width,
                    last.height,
                )
                for image in job.pictures(c)  # never empty: checked by check_segment
            ]
            out.append(
                conditions.condition_for(
                    padded[0] if len(padded) == 1 else padded,
                    c.pixel_frame,
                    c.strength,
                    c.crf,
                    segment.num_frames,
                    guide=c.guide,
                )
            )
        return out

    def _decode_video(self, latents: torch.Tensor) -> np.ndarray:
        """Denormalised video latents → ``uint8`` frames ``(frames, height, width, 3)``, converted on the
        device; decoded in tiles when ``vae_tiling`` says so (``auto``: when an untiled decode would not
        fit, or after it ran out of memory)."""
        import torch

        from reelgen.engines.acceleration import use_vae_tiling

        vae = self._components["vae"]
        latents = latents.to(device=self.device, dtype=vae.dtype)
        temb = None
        if vae.config.timestep_conditioning:  # decode at timestep 0 with no added noise (the pipeline default)
            temb = torch.zeros(latents.shape[0], device=self.device, dtype=latents.dtype)
        mode = self.acceleration.vae_tiling
        vae.use_tiling = use_vae_tiling(mode, vae, tuple(latents.shape), self.device)
        try:
            video = vae.decode(latents, temb, return_dict=False)[0][0]  # (C, F, H, W) in [-1, 1]
        except torch.cuda.OutOfMemoryError:
            if vae.use_tiling or mode != "auto":
                raise
            torch.cuda.empty_cache()
            vae.use_tiling = True
            video = vae.decode(latents, temb, return_dict=False)[0][0]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(1, 2, 3, 0).contiguous().cpu().numpy()  # type: ignore[no-any-return]

    def _decode_audio(self, latents: torch.Tensor) -> np.ndarray:
        """Audio latents → ``float32`` waveform ``(channels, samples)`` at ``sample_rate``."""
        audio_vae, vocoder = self._components["audio_vae"], self._components["vocoder"]
        mel = audio_vae.decode(latents.to(device=self.device, dtype=audio_vae.dtype), return_dict=False)[0]
        wave = vocoder(mel.to(vocoder.dtype))[0]
        return wave.float().cpu().numpy()  # type: ignore[no-any-return]


def _centre_crop(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """The centre ``width`` x ``height`` of ``(frames, H, W, 3)`` frames: pixels kept as generated."""
    import numpy as np

    h, w = frames.shape[1:3]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(frames[:, top : top + height, left : left + width])


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    from reelgen.inputs import fit_image

    return fit_image(image, width, height)
