"""The engine protocol: load once, generate many.

An engine turns one ``Segment`` of a ``Job`` into a ``Clip`` (uint8 frames + float audio).
Progress is reported once per denoising step through ``on_step``; returning ``False`` from
``on_step`` (or a raised ``Cancelled``) stops the run at the next step boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    """Frames (``uint8``, shape ``(frames, height, width, 3)``) and audio (``float32``, ``(channels, samples)``)."""

    frames: np.ndarray
    fps: int
    audio: np.ndarray | None
    sample_rate: int | None


class Engine(Protocol):
    #: True when the weights are random (output is noise); every command using it says so.
    random_weights: bool

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        """Generate one segment of ``job`` (frames trimmed to ``segment.seconds * job.fps``)."""
        ...
