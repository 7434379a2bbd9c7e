"""The engine protocol: load once, generate many.

An engine turns one ``Segment`` of a ``Job`` into a ``Clip`` (uint8 frames + float audio).
Progress is reported once per denoising step through ``on_step``; returning ``False`` from
``on_step`` (or a raised ``Cancelled``) stops the run at the next step boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import numpy as np

    from reelgen.domain import Job, Segment

#: Called after each denoising step with (steps done in this segment, steps in this segment).
#: Returning False asks the engine to stop at this step boundary.
StepCallback = Callable[[int, int], bool | None]


class Cancelled(ReelgenError):
    """Raised by an engine when ``on_step`` asked it to stop."""

    def __init__(self, message: str = "The generation was cancelled.") -> None:
        super().__init__(ErrorCode.CANCELLED, message)


@dataclass
class Clip:
    """Frames (``uint8``, shape ``(frames, height, width, 3)``) and audio (``float32``, ``(channels, samples)``).

    ``frames`` holds exactly ``seconds * fps`` frames and ``audio`` exactly ``seconds * sample_rate``
    samples (None when the job has no audio). ``timings`` lists ``(stage, seconds)`` in the order
    the stages ran (``text_encoding``, one ``stage1_step`` / ``stage2_step`` per denoising step,
    ``upsample``, ``vae_decode``, ``audio_decode``), for benchmarks and logs; ``rows`` counts the
    transformer rows each stage ran (one per step unguided; classifier-free, spatio-temporal and
    modality guidance each add rows).
    """

    frames: np.ndarray
    fps: int
    audio: np.ndarray | None
    sample_rate: int | None
    timings: list[tuple[str, float]] = field(default_factory=list)
    #: transformer rows (batch entries through the denoiser) per stage: guidance costs rows
    rows: dict[str, int] = field(default_factory=dict)
    #: transformer calls per stage that the step cache answered without running the blocks
    cached: dict[str, int] = field(default_factory=dict)
    #: the soundtrack the model made over a segment's lead frames (the frames it continues: a
    #: ``continue`` shot's copy of the previous shot's end, or the end of the video being extended;
    #: not kept): the file crossfades the sound before the joint into it (``Mp4Writer.add``)
    lead_audio: np.ndarray | None = None


class Engine(Protocol):
    """Load once (``reelgen.engines.load_engine``), then ``generate`` many segments."""

    #: True when the weights are random (output is noise); every command using it says so.
    random_weights: bool

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        """Generate one segment of ``job`` (frames trimmed to ``segment.seconds * job.fps``).

        ``job.start_image`` conditions the job's first segment and ``job.end_image`` its last one;
        a later shot's continuity conditions read ``job.previous_frames`` / ``job.reference_image``,
        which ``render`` fills from the shots before it (``reelgen.continuity.Carry``; the extend
        model fills ``previous_frames`` with the end of the video it continues, and
        ``job.previous_audio`` with its sound), and a segment's ``lead_frames`` are generated but not
        returned (their sound is, as ``Clip.lead_audio``).
        Invalid input raises ``ReelgenError`` before any work; ``on_step`` returning False raises
        ``Cancelled`` at the next step boundary. The same job and segment give the same clip.
        """
        ...


def check_segment(job: Job, segment: Segment, *, num_layers: int, has_upsampler: bool) -> None:
    """Check a planned segment against an engine before any work: frame count, stages (sizes in the
    VAE's 32-pixel steps, sigmas, upsampling only in stage 2), STG blocks the transformer has
    (``num_layers``), condition images and frames; a two-stage plan needs ``has_upsampler``."""
    if segment not in job.segments:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"segment {segment.prompt[:40]!r} is not part of the job")
    if segment.seconds < 1:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"a shot must last at least 1 s (got {segment.seconds} s)")
    if job.fps <= 0:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"fps {job.fps} must be positive")
    lead = segment.lead_frames
    if lead < 0 or segment.num_frames % 8 != 1 or segment.num_frames < segment.seconds * job.fps + max(lead, 1):
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"num_frames {segment.num_frames} must be 8k+1 and cover {segment.seconds} s at {job.fps} fps"
            + (f" after {lead} lead frames" if lead else ""),
        )
    if not segment.stages or len(segment.stages) > 2:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"a segment has one or two stages (got {len(segment.stages)})")
    for k, stage in enumerate(segment.stages):
        if stage.width <= 0 or stage.height <= 0 or stage.width % 32 or stage.height % 32:  # the VAE's 32x
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"{stage.name} size {stage.width}x{stage.height}: each side must be a positive multiple of 32",
            )
        if not stage.sigmas:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"{stage.name} has no sigmas")
        if stage.upsample != (k > 0):
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"{stage.name}: only a second stage starts from upsampling")
        blocks = stage.guidance.get("spatio_temporal_guidance_blocks") or []
        if any(b >= num_layers for b in blocks):
            raise ReelgenError(
                ErrorCode.INVALID_PROFILE,
                f"{stage.name}: STG blocks {blocks} outside the transformer's 0-{num_layers - 1}",
            )
        for c in stage.conditions:
            if not job.pictures(c):
                raise ReelgenError(ErrorCode.INVALID_INPUT, f"the plan conditions on a {c.image} image; none given")
            if not 0 <= c.pixel_frame < segment.num_frames:
                raise ReelgenError(
                    ErrorCode.INVALID_INPUT,
                    f"a condition at pixel frame {c.pixel_frame} is outside the {segment.num_frames} frames",
                )
    last = segment.stages[-1]
    if last.width < job.width or last.height < job.height:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"the output {job.width}x{job.height} is larger than the generated {last.width}x{last.height}",
        )
    if len(segment.stages) == 2 and not has_upsampler:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, "two-stage mode but no latent upsampler is loaded")
