"""The extend model on a worker: continue a completed task's video and write the whole as one MP4.

1. The original is checked again (it may have been deleted since submit: ``INVALID_INPUT``, the task
   fails and its credits are released) and its MP4 is read from storage (a local file as it is, an
   S3 object through a scratch copy).
2. One decoding pass keeps the last ``LEAD_FRAMES`` frames and the whole soundtrack.
3. ``plan_extension`` plans one segment of ``duration`` seconds that continues those frames exactly
   as a ``continue`` shot continues the shot before it (``reelgen.continuity``): they are the job's
   ``previous_frames``, a ``previous`` condition at pixel frame 0 puts them in (their VAE latents
   replace the first latent frames, kept clean at every step), the segment generates them as its
   ``lead_frames`` and drops them, and the ``duration * fps`` frames after them are the extension.
4. Sound, beyond what a ``continue`` shot does: when the original has sound and the extension asks
   for it, its soundtrack's end (the lead's span and ``TAIL_CONTEXT_SECONDS`` before it) is the job's
   ``previous_audio``; the engine encodes it with the audio VAE and holds the first audio tokens of
   the generation on it at every step (``engines/audio_condition``: diffusers' pipeline has no audio
   condition of its own, so this is latent replacement, not the reference's per-token mask). The
   model thus hears the original's sound under the lead and continues it.
5. The output is the original's frames (decoded and re-encoded, in chunks, never held whole) and then
   the extension's, joined as ``render`` joins a ``continue`` shot (``Mp4Writer.add(lead_in=)``): the
   original's last ``LEAD_FRAMES / fps`` seconds of sound crossfade (equal power) into the sound the
   model made under the lead (the audio VAE's rendering of the same sound), and the extension's own
   soundtrack follows without a break. ``original + duration`` seconds, video and audio.

``audio`` true on a silent original gives silence under the original's part (an ordinary joint into
the extension's sound); false drops the sound.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.continuity import CONTINUE_FRAMES
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.engine import Connection

    from reelgen.domain import Job
    from reelgen.engines.base import Clip, Engine
    from reelgen.media import MediaInfo
    from reelgen.profiles import Profile
    from reelgen.storage.base import Storage
    from reelgen.store.tasks import TaskRow

__all__ = ["LEAD_FRAMES", "Original", "extend", "plan_extension", "read_original", "write_joined"]

#: frames of the original's end the extension leads with: a ``continue`` shot's (8k+1, 0.375 s at
#: 24 fps), the shortest lead that carries motion as well as the last picture
LEAD_FRAMES = CONTINUE_FRAMES
#: frames decoded (and re-encoded) at a time while the original is copied into the output
CHUNK_FRAMES = 24
#: seconds of the original's sound before the lead that are encoded with it (the audio VAE's causal
#: convolutions see them), so the tail's latents are those of the sound in context
TAIL_CONTEXT_SECONDS = 1.0


@dataclass(frozen=True)
class Original:
    """What the extension needs of the video it continues."""

    path: Path
    frames: int
    width: int
    height: int
    #: its last ``LEAD_FRAMES`` frames, ``uint8`` ``(n, height, width, 3)``
    tail: np.ndarray
    #: its whole soundtrack ``(channels, samples)`` and sample rate; None when it has no sound
    audio: np.ndarray | None
    sample_rate: int | None


def read_original(path: Path, lead: int = LEAD_FRAMES) -> Original:
    """Decode ``path`` once: count its frames, keep the last ``lead``, and read its soundtrack."""
    import numpy as np

    from reelgen.media import read_audio, read_frames

    tail: collections.deque[np.ndarray] = collections.deque(maxlen=lead)
    count = 0
    for chunk in read_frames(path, CHUNK_FRAMES):
        count += len(chunk)
        tail.extend(chunk)
    if count < lead:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"the video to extend has {count} frames; at least {lead} needed")
    sound = read_audio(path)
    frames = np.stack(list(tail))
    return Original(
        path=path,
        frames=count,
        width=frames.shape[2],
        height=frames.shape[1],
        tail=frames,
        audio=None if sound is None else sound[0],
        sample_rate=None if sound is None else sound[1],
    )


def plan_extension(task_input: dict[str, Any], profile: Profile, *, seed: int, original: Original) -> Job:
    """The job of an extension (its stored input: ``task_id``, ``prompt``, ``duration``, ``audio``,
    ``mode``, as submit stores it): one segment of ``duration`` s in the original's mode and aspect
    ratio that continues the original's last frames as a ``continue`` shot continues the shot before
    it (``continuity.lead_condition``: a ``previous`` condition at pixel frame 0, ``lead_frames``
    generated and dropped), with the original's sound under them in ``Job.previous_audio``."""
    from PIL import Image

    from reelgen.continuity import lead_condition
    from reelgen.domain import model_frames
    from reelgen.planning import CONDITION_PIPELINE, nearest_aspect, plan
    from reelgen.schemas import ExtendInput, GenerateInput, Mode, stored_input

    ext = stored_input(ExtendInput, task_input)

    inp = GenerateInput(
        prompt=ext.prompt,
        duration=ext.duration,
        mode=ext.mode or Mode.STANDARD,
        audio=bool(ext.audio),
        aspect_ratio=nearest_aspect(original.width, original.height),
    )
    job = plan(inp, profile, seed=seed)
    if (job.width, job.height) != (original.width, original.height):
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"the video to extend is {original.width}x{original.height}; this profile makes "
            f"{job.width}x{job.height} in its mode and aspect ratio",
        )
    lead = len(original.tail)
    segment = job.segments[0]
    frames = model_frames(segment.seconds, profile.fps, lead)
    condition = lead_condition(lead)
    stages = tuple(
        replace(st, frames=frames, pipeline=CONDITION_PIPELINE, conditions=(condition,)) for st in segment.stages
    )
    sound = None
    if job.audio and original.audio is not None and original.sample_rate:
        from reelgen.media import fit_samples, stereo

        rate = original.sample_rate
        end = round(original.frames * rate / profile.fps)  # the sound ends where the picture does
        start = max(0, end - round((lead / profile.fps + TAIL_CONTEXT_SECONDS) * rate))
        sound = fit_samples(stereo(original.audio), end)[:, start:]
    return replace(
        job,
        segments=(replace(segment, num_frames=frames, stages=stages, lead_frames=lead),),
        previous_frames=tuple(Image.fromarray(f) for f in original.tail),
        previous_audio=sound,
        previous_audio_rate=(original.sample_rate or 0) if sound is not None else 0,
    )


def write_joined(job: Job, original: Original, clip: Clip, out_path: Path, *, codec: str = "libx264") -> MediaInfo:
    """One MP4 at ``out_path``: the original's frames (decoded and re-encoded chunk by chunk) with its
    soundtrack (silence if it has none; trimmed or padded to exactly its frames' length), then the
    clip's, joined as ``render`` joins a ``continue`` shot: the original's end crossfades into the
    sound the model made under the lead (``Mp4Writer.add(lead_in=)``). No audio stream unless
    ``job.audio``."""
    import numpy as np

    from reelgen.media import Mp4Writer, fit_samples, probe, read_frames

    rate = clip.sample_rate if job.audio else None
    head = None
    if rate is not None:
        if original.audio is not None and original.sample_rate != rate:
            raise ReelgenError(
                ErrorCode.GENERATION_FAILED,
                f"the video to extend has sound at {original.sample_rate} Hz; this engine makes {rate} Hz",
            )
        length = round(original.frames * rate / job.fps)
        silent = np.zeros((2, length), dtype=np.float32)
        head = silent if original.audio is None else fit_samples(original.audio, length)
    decoded = 0

    def original_frames() -> Iterator[np.ndarray]:
        nonlocal decoded
        for chunk in read_frames(original.path, CHUNK_FRAMES):
            decoded += len(chunk)
            yield from chunk

    with Mp4Writer(out_path, width=job.width, height=job.height, fps=job.fps, sample_rate=rate, codec=codec) as writer:
        writer.add(original_frames(), head)
        if decoded != original.frames:
            raise ReelgenError(
                ErrorCode.GENERATION_FAILED, f"the original decoded to {decoded} frames, then {original.frames}"
            )
        # a silent original has no sound to run on into the lead's: an ordinary joint
        lead_in = clip.lead_audio if original.audio is not None else None
        writer.add(clip.frames, clip.audio if rate is not None else None, lead_in=lead_in)
    return probe(out_path)


@contextlib.contextmanager
def _local_copy(storage: Storage, key: str, scratch: Path) -> Iterator[Path]:
    """A local file holding the stored object ``key``: the file itself, or a scratch copy (S3)."""
    path = storage.local_path(key)
    if path is not None:
        yield path
        return
    try:
        try:
            with storage.open(key) as src, scratch.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, ReelgenError):
            raise _gone() from None
        yield scratch
    finally:
        scratch.unlink(missing_ok=True)


def _gone() -> ReelgenError:
    return ReelgenError(ErrorCode.INVALID_INPUT, "The video to extend is no longer available.")


def extend(
    task: TaskRow,
    *,
    profile: Profile,
    engine: Engine,
    storage: Storage,
    read_task: Callable[[Callable[[Connection], TaskRow | None]], TaskRow | None],
    out_path: Path,
    on_progress: Callable[[int, int], bool | None] | None = None,
) -> MediaInfo:
    """Run the extension ``task``: check its original again, read it, generate, write the whole.
    ``read_task(fn)`` runs ``fn`` on a store connection (the worker's)."""
    from reelgen.generation import check_clip
    from reelgen.service.extend import check_original
    from reelgen.store import tasks

    original_id = str(task.input["task_id"])
    row = check_original(read_task(lambda conn: tasks.get(conn, original_id)), task.account_id, profile.name)
    assert row.result_key is not None  # check_original
    if not storage.exists(row.result_key):
        raise _gone()
    scratch = storage.temp_path(f"{task.id}.{task.attempt}.original.mp4")
    with _local_copy(storage, row.result_key, scratch) as path:
        original = read_original(path)
        job = plan_extension(task.input, profile, seed=task.seed, original=original)
        segment = job.segments[0]

        def on_step(done: int, total: int) -> bool:
            return on_progress is None or on_progress(done, total) is not False

        clip = engine.generate(job, segment, on_step)
        check_clip(job, clip, segment.seconds)
        return write_joined(job, original, clip, out_path, codec=getattr(engine, "video_encoder", "libx264"))
