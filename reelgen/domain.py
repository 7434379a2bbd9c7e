"""Internal types: task states and the plan of one generation (``plan(request, profile) -> Job``).

Frozen dataclasses and enums; no torch here. The engine receives a ``Job``; images are attached
by the caller after fetching and cropping them (``reelgen.inputs``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import Profile
from reelgen.schemas import AspectRatio, GenerateInput, Mode

if TYPE_CHECKING:
    from PIL import Image


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)

    def can_move_to(self, new: TaskStatus) -> bool:
        return new in _MOVES[self]


_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    # processing -> pending is a requeue (lease expired, worker drained) as a new attempt
    TaskStatus.PROCESSING: frozenset(
        {TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def model_frames(seconds: int, fps: int) -> int:
    """Frames the LTX-2 model must generate to cover ``seconds``: the smallest 8k+1 >= seconds*fps+1."""
    return 8 * math.ceil(seconds * fps / 8) + 1


def derive_seed(seed: int, index: int) -> int:
    """A per-shot seed derived from the task seed (stable across Python versions and runs)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def nearest_aspect(width: int, height: int) -> AspectRatio:
    """The supported aspect ratio nearest (in log space) to a ``width`` x ``height`` image."""
    r = math.log(width / height)
    return min(AspectRatio, key=lambda a: abs(math.log(a.ratio) - r))


@dataclass(frozen=True)
class Segment:
    """One model call: a shot (or the whole clip when ``multi_shots`` is false)."""

    prompt: str
    seconds: int
    num_frames: int  # what the model generates (8k+1); the file keeps seconds*fps of them
    seed: int


@dataclass(frozen=True)
class Job:
    """Everything an engine needs for one request; sizes are the final output size."""

    width: int
    height: int
    fps: int
    mode: Mode
    audio: bool
    steps: int
    guidance: dict[str, float]
    two_stage: bool
    stage2_sigmas: tuple[float, ...]
    segments: tuple[Segment, ...]
    negative_prompt: str = ""
    max_sequence_length: int = 1024
    start_image: Image.Image | None = field(default=None, compare=False)
    end_image: Image.Image | None = field(default=None, compare=False)

    @property
    def seconds(self) -> int:
        return sum(s.seconds for s in self.segments)

    @property
    def total_steps(self) -> int:
        """Denoising steps across all segments and stages (for progress)."""
        per = self.steps + (len(self.stage2_sigmas) if self.two_stage else 0)
        return per * len(self.segments)


def plan(
    inp: GenerateInput,
    profile: Profile,
    *,
    seed: int,
    start_image_size: tuple[int, int] | None = None,
) -> Job:
    """Map a validated Kling 3.0 input onto the profile: size, frames, steps, guidance, shots."""
    if not profile.min_duration <= inp.duration <= profile.max_duration:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"duration {inp.duration} s is outside {profile.min_duration}-{profile.max_duration} s "
            f"for profile {profile.name!r}",
        )
    spec = profile.mode(inp.mode)
    if start_image_size is not None:
        aspect = nearest_aspect(*start_image_size)
    else:
        aspect = AspectRatio(inp.aspect_ratio or AspectRatio.WIDE)
    width, height = spec.size(aspect)
    if inp.multi_shots and inp.multi_prompt:
        shared = inp.prompt.strip()
        segments = tuple(
            Segment(
                prompt=f"{shared}\n{shot.prompt.strip()}" if shared else shot.prompt.strip(),
                seconds=shot.duration,
                num_frames=model_frames(shot.duration, profile.fps),
                seed=derive_seed(seed, i),
            )
            for i, shot in enumerate(inp.multi_prompt)
        )
    else:
        segments = (
            Segment(
                prompt=inp.prompt.strip(),
                seconds=inp.duration,
                num_frames=model_frames(inp.duration, profile.fps),
                seed=seed,
            ),
        )
    for s in segments:
        if s.seconds < 1:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"a shot must last at least 1 s (got {s.seconds} s)")
    return Job(
        width=width,
        height=height,
        fps=profile.fps,
        mode=Mode(inp.mode),
        audio=inp.audio,
        steps=spec.steps,
        guidance=dict(spec.guidance),
        two_stage=spec.two_stage,
        stage2_sigmas=spec.stage2_sigmas,
        segments=segments,
        negative_prompt=profile.negative_prompt,
        max_sequence_length=profile.max_sequence_length,
    )
