"""The extend model on a worker: continue a completed task's video and write the whole as one MP4.

1. The original is checked again (it may have been deleted since submit: ``INVALID_INPUT``, the task
   fails and its credits are released) and its MP4 is read from storage (a local file as it is, an
   S3 object through a scratch copy).
2. One decoding pass keeps the last ``LEAD_FRAMES`` frames and the whole soundtrack.
3. ``plan_extension`` plans one segment of ``duration`` seconds that *leads* with those frames: they
   condition the generation as one multi-frame condition at pixel frame 0 (diffusers'
   ``LTX2ConditionPipeline``: their VAE latents replace the first latent frames, kept clean at every
   step), so the model continues the picture from the original's last frames; the lead is generated
   and dropped, and the ``duration * fps`` frames after it are the extension.
4. Sound: when the original has sound and the extension asks for it, its soundtrack's end (the lead's
   span and ``TAIL_CONTEXT_SECONDS`` before it) is encoded by the audio VAE and the first audio tokens
   of the generation are held on the original's latents at every step (``engines/audio_condition``:
   diffusers' pipeline has no audio condition of its own, so this is latent replacement, not the
   reference's per-token mask). The model thus hears the original's sound under the lead and
   continues it. The join is an equal-power cross-fade over the lead: the original's last
   ``LEAD_FRAMES / fps`` seconds fade out while the soundtrack the model made under the lead (the
   audio VAE's rendering of the same sound) fades in, and the extension's own soundtrack follows
   without a break. No gap, no click; the lengths add up.
5. The output is the original's frames (decoded and re-encoded, in chunks, never held whole) and then
   the extension's, with the joined soundtrack: ``original + duration`` seconds, video and audio.

``audio`` true on a silent original gives silence under the original's part; false drops the sound.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

#: frames of the original's end the extension leads with: 8k+1 (the first latent frame and one more,
#: 0.375 s at 24 fps), the shortest lead that carries motion as well as the last picture
LEAD_FRAMES = 9
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
    ratio, leading with the original's last frames (a ``lead`` condition at pixel frame 0)."""
    from reelgen.domain import Condition, model_frames
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
    frames = model_frames(segment.seconds, profile.fps) + lead - 1  # 8k+1 covering lead + seconds * fps
    condition = Condition("lead", 0, 1.0, 0)
    stages = tuple(
        replace(st, frames=frames, pipeline=CONDITION_PIPELINE, conditions=(condition,)) for st in segment.stages
    )
    lead_audio = None
    if job.audio and original.audio is not None and original.sample_rate:
        from reelgen.media import fit_samples, stereo

        rate = original.sample_rate
        end = round(original.frames * rate / profile.fps)  # the sound ends where the picture does
        start = max(0, end - round((lead / profile.fps + TAIL_CONTEXT_SECONDS) * rate))
        lead_audio = fit_samples(stereo(original.audio), end)[:, start:]
    return replace(
        job,
        segments=(replace(segment, num_frames=frames, stages=stages, lead_frames=lead),),
        lead_video=original.tail,
        lead_audio=lead_audio,
        lead_audio_rate=(original.sample_rate or 0) if lead_audio is not None else 0,
    )


def joined_audio(
    original: Original, lead_audio: np.ndarray | None, audio: np.ndarray, rate: int, fps: int
) -> np.ndarray:
    """The whole soundtrack at ``rate``: the original's (silence if it has none; trimmed or padded to
    exactly its frames' length), cross-faded over the lead into ``lead_audio`` (what the model made
    under the lead), then the extension's ``audio``."""
    import numpy as np

    from reelgen.media import crossfade, fit_samples, stereo

    head_len = round(original.frames * rate / fps)
    if original.audio is None:
        return np.concatenate([np.zeros((2, head_len), dtype=np.float32), stereo(audio)], axis=-1)
    if original.sample_rate != rate:
        raise ReelgenError(
            ErrorCode.GENERATION_FAILED,
            f"the video to extend has sound at {original.sample_rate} Hz; this engine makes {rate} Hz",
        )
    head = fit_samples(stereo(original.audio), head_len)
    n = 0 if lead_audio is None else min(lead_audio.shape[-1], head_len)
    if n == 0 or lead_audio is None:
        return np.concatenate([head, stereo(audio)], axis=-1)
    faded = crossfade(head[:, head_len - n :], lead_audio[..., lead_audio.shape[-1] - n :])
    return np.concatenate([head[:, : head_len - n], faded, stereo(audio)], axis=-1)


def write_joined(job: Job, original: Original, clip: Clip, out_path: Path, *, codec: str = "libx264") -> MediaInfo:
    """One MP4 at ``out_path``: the original's frames (re-encoded chunk by chunk) then the clip's, with
    the joined soundtrack when ``job.audio`` (none at all otherwise)."""
    from reelgen.media import Mp4Writer, read_frames

    rate = clip.sample_rate if job.audio else None
    sound = None
    if rate is not None:
        assert clip.audio is not None  # the engine's clip was checked
        sound = joined_audio(original, clip.lead_audio, clip.audio, rate, job.fps)
    writer = Mp4Writer(out_path, width=job.width, height=job.height, fps=job.fps, sample_rate=rate, codec=codec)
    with writer:
        done = 0
        for chunk in read_frames(original.path, CHUNK_FRAMES):
            writer.add(chunk, _audio_of(sound, done, len(chunk), rate, job.fps), fade=False)
            done += len(chunk)
        if done != original.frames:
            raise ReelgenError(
                ErrorCode.GENERATION_FAILED, f"the original decoded to {done} frames, then {original.frames}"
            )
        writer.add(clip.frames, None if sound is None else sound[:, _at(done, rate, job.fps) :], fade=False)
    from reelgen.media import probe

    return probe(out_path)


def _at(frame: int, rate: int | None, fps: int) -> int:
    return round(frame * (rate or 0) / fps)


def _audio_of(sound: np.ndarray | None, start: int, frames: int, rate: int | None, fps: int) -> np.ndarray | None:
    """The soundtrack under frames ``start`` .. ``start + frames`` (sample boundaries rounded alike)."""
    if sound is None:
        return None
    return sound[:, _at(start, rate, fps) : _at(start + frames, rate, fps)]


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
