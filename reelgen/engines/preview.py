"""Live previews from inside the denoising loop: a few latent frames of the current estimate, decoded
by the video VAE at the stage's size and shrunk.

``PreviewTap`` rides on the pipelines' ``callback_on_step_end`` (through ``StepClock``). After the
steps the profile's ``previews`` ask for (every ``every``-th step of a segment, and the last step of
every stage but the last) it takes the packed latents the callback receives and:

1. estimates the clean latents: after an Euler step from sigma ``s_i`` to ``s_{i+1}`` the velocity is
   ``(x_{i+1} - x_i) / (s_{i+1} - s_i)`` and the estimate ``x_0 = x_{i+1} - s_{i+1} v`` (``x_i`` is a
   copy kept from the step before; after a stage's last step ``s = 0`` and the latents are clean);
2. keeps the video tokens (a condition pipeline appends keyframe tokens), unpacks and denormalises
   them, and picks ``frames`` latent frames evenly spaced over the clip;
3. decodes each picked latent frame alone (as the VAE's causal first frame, all in one batch) at the
   stage's size, centre-crops to the output's aspect ratio, shrinks to at most ``max_side`` pixels
   and converts to ``uint8`` on the device.

It only reads: the latents the pipeline goes on with, the generator and the scheduler are untouched,
so a generation is bit-identical with previews on or off (tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reelgen.livepreview import LivePreview, Previews, PreviewSink

if TYPE_CHECKING:
    import torch

    from reelgen.planning import Job, Segment, Stage

__all__ = ["PreviewTap", "pick_frames"]


def pick_frames(latent_frames: int, count: int) -> list[int]:
    """``count`` latent frame indices spread evenly over ``latent_frames`` (first and last included)."""
    if count <= 1 or latent_frames <= 1:
        return [latent_frames // 2]
    count = min(count, latent_frames)
    return sorted({round(j * (latent_frames - 1) / (count - 1)) for j in range(count)})


@dataclass
class PreviewTap:
    """Decodes previews of one segment at the steps ``spec`` asks for and hands them to ``sink``."""

    spec: Previews
    sink: PreviewSink
    vae: Any
    job: Job
    segment: Segment
    stage: Stage | None = None
    last_stage: bool = True
    #: the latents after the step before a preview step (for the clean estimate)
    previous: torch.Tensor | None = None
    made: int = 0
    timings: list[tuple[str, float]] = field(default_factory=list)

    def start_stage(self, stage: Stage) -> None:
        self.stage, self.last_stage, self.previous = stage, stage is self.segment.stages[-1], None

    def wanted(self, index: int, done: int) -> bool:
        """Whether a preview follows the stage's step ``index`` (0-based), ``done`` steps into the segment."""
        assert self.stage is not None
        last_step = index == self.stage.steps - 1
        if last_step:
            return not self.last_stage  # the end of the last stage is the video itself
        return self.spec.every > 0 and done % self.spec.every == 0

    def __call__(self, pipe: Any, index: int, done: int, latents: torch.Tensor) -> bool:
        """After the stage's step ``index``, ``done`` steps into the segment (``latents`` as packed);
        True when a preview was made."""
        made = self.wanted(index, done)
        if made:
            t0 = time.perf_counter()
            frames = self._decode(pipe, index, latents)
            self.timings.append(("preview", time.perf_counter() - t0))
            self.made += 1
            count = frames.shape[0]
            fps = count / max(1, self.segment.seconds)
            self.sink(LivePreview(frames=frames, step=done, total=self.segment.steps, fps=fps))
        assert self.stage is not None
        # keep a copy when the next step makes a preview (its clean estimate needs these latents)
        upcoming = index + 1
        self.previous = latents.clone() if upcoming < self.stage.steps and self.wanted(upcoming, done + 1) else None
        return made

    def _clean(self, pipe: Any, index: int, latents: torch.Tensor) -> torch.Tensor:
        sigmas = pipe.scheduler.sigmas
        s_next = float(sigmas[index + 1])
        if self.previous is None or s_next == 0.0:
            return latents
        s_prev = float(sigmas[index])
        if s_prev == s_next:
            return latents
        velocity = (latents - self.previous) / (s_next - s_prev)
        return latents - s_next * velocity

    def _decode(self, pipe: Any, index: int, latents: torch.Tensor) -> Any:
        import torch
        import torch.nn.functional as F

        stage = self.stage
        assert stage is not None
        vae = self.vae
        p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        lf = (stage.frames - 1) // pipe.vae_temporal_compression_ratio + 1
        lh, lw = stage.height // pipe.vae_spatial_compression_ratio, stage.width // pipe.vae_spatial_compression_ratio
        tokens = (lf // pt) * (lh // p) * (lw // p)
        clean = self._clean(pipe, index, latents)[:, :tokens]
        video = pipe._unpack_latents(clean, lf, lh, lw, p, pt)
        video = pipe._denormalize_latents(video, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        picked = video[0][:, pick_frames(lf, self.spec.frames)]  # (C, k, h, w)
        batch = picked.permute(1, 0, 2, 3).unsqueeze(2).to(dtype=vae.dtype)  # k clips of one latent frame
        temb = None
        if vae.config.timestep_conditioning:  # as the final decode: timestep 0, no added noise
            temb = torch.zeros(batch.shape[0], device=batch.device, dtype=batch.dtype)
        rgb = vae.decode(batch, temb, return_dict=False)[0][:, :, 0].float()  # (k, 3, H, W) in [-1, 1]
        generated = self.segment.stages[-1]
        rgb = _crop(rgb, self.job.width / generated.width, self.job.height / generated.height)
        h, w = rgb.shape[-2:]
        scale = min(1.0, self.spec.max_side / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size != (h, w):
            rgb = F.interpolate(rgb, size=size, mode="area")
        out = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _crop(rgb: torch.Tensor, keep_w: float, keep_h: float) -> torch.Tensor:
    """The centre ``keep_w`` x ``keep_h`` fraction of ``(k, 3, H, W)``: the part the output keeps."""
    h, w = rgb.shape[-2:]
    ch, cw = max(1, round(h * keep_h)), max(1, round(w * keep_w))
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[..., top : top + ch, left : left + cw]
