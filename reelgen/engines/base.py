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


class Engine(Protocol):
    """Load once (``reelgen.engines.load_engine``), then ``generate`` many segments."""

    #: True when the weights are random (output is noise); every command using it says so.
    random_weights: bool

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        """Generate one segment of ``job`` (frames trimmed to ``segment.seconds * job.fps``).

        ``job.start_image`` conditions the job's first segment and ``job.end_image`` its last one.
        Invalid input raises ``ReelgenError`` before any work; ``on_step`` returning False raises
        ``Cancelled`` at the next step boundary. The same job and segment give the same clip.
        """
        ...
