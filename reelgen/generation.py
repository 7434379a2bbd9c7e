"""One generation end to end: run every segment of a ``Job`` on an engine and write one MP4.

``enhance`` first has the engine's prompt enhancer rewrite each segment's prompt when the plan says
so (``input.enhance_prompt``). ``render`` is what the worker and the local command
(``reelgen.local``) share: one engine call per segment (a multi-shot job has one per shot, each with
its own derived seed), in order, each given what its continuity conditions need of the shots before
it (``reelgen.continuity.Carry``), clips streamed into the MP4 as they are made, progress reported
over the whole job, and the file moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.continuity import Carry
from reelgen.engines.base import Clip, Engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.livepreview import LivePreview, Previews, PreviewSink

if TYPE_CHECKING:
    from reelgen.domain import Job
    from reelgen.media import MediaInfo, Mp4Writer

#: ``on_progress(done_steps, total_steps)``; returning False cancels the job.
ProgressCallback = Callable[[int, int], bool | None]

RANDOM_WEIGHTS_WARNING = (
    "warning: this engine has random weights ({source}): the video and its soundtrack are noise. "
    "Shapes, durations, audio and timing are real; load real weights with --weights DIR for real output."
)


def enhance(
    job: Job,
    engine: Engine,
    on_progress: ProgressCallback | None = None,
    *,
    timings: list[tuple[str, float]] | None = None,
) -> tuple[Job, tuple[str, ...]]:
    """``job`` with every segment that plans an enhancement conditioned on the enhancer's text, and the
    prompt each segment is now conditioned on (empty when the job plans none: ``job`` is returned as is).

    The engine's ``enhance_prompt(job, segment, should_stop)`` writes the text (an engine without one
    fails with ``PROMPT_ENHANCEMENT_FAILED``); ``on_progress(0, total)`` returning False while it runs
    stops it (``Cancelled``), as for the denoising steps. ``timings`` receives ``prompt_enhancement``.
    """
    if not any(s.enhancement is not None for s in job.segments):
        return job, ()
    write = getattr(engine, "enhance_prompt", None)
    if write is None:
        raise ReelgenError(ErrorCode.PROMPT_ENHANCEMENT_FAILED, "This engine has no prompt enhancer.")

    def should_stop() -> bool:
        return on_progress is not None and on_progress(0, job.total_steps) is False

    segments = []
    for segment in job.segments:
        if segment.enhancement is None:
            segments.append(segment)
            continue
        t0 = time.perf_counter()
        segments.append(segment.enhanced(write(job, segment, should_stop)))
        if timings is not None:
            timings.append(("prompt_enhancement", time.perf_counter() - t0))
    enhanced = replace(job, segments=tuple(segments))
    return enhanced, tuple(s.prompt for s in enhanced.segments)


def render(
    job: Job,
    engine: Engine,
    out_path: str | Path,
    on_progress: ProgressCallback | None = None,
    *,
    timings: list[tuple[str, float]] | None = None,
    rows: dict[str, int] | None = None,
    cached: dict[str, int] | None = None,
    previews: Previews | None = None,
    on_preview: PreviewSink | None = None,
) -> MediaInfo:
    """Generate every segment of ``job`` with ``engine`` and write them, joined, to ``out_path``.

    ``on_progress(done, total)`` is called after every denoising step with counts over the whole
    job (``total == job.total_steps``); returning False stops at that step boundary and raises
    ``Cancelled`` (no file is left behind). ``timings``, when given, receives every segment's stage
    timings plus ``muxing`` (the time spent encoding and writing the MP4); ``rows``, when given,
    adds up the transformer rows each stage ran, and ``cached`` the transformer calls the step cache
    answered without running the blocks. With ``previews`` and ``on_preview``, an engine whose
    ``generate`` takes them (``makes_previews``) hands live previews to ``on_preview``, their steps
    counted over the whole job like ``on_progress``'s; any other engine makes none.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from reelgen.media import Mp4Writer

    writer: Mp4Writer | None = None
    # Shot k is encoded on this thread while the engine generates shot k+1 (PyAV and torch both let
    # go of the GIL while they work); at most one shot waits to be encoded.
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    pending: Future[float] | None = None

    def settle() -> None:
        nonlocal pending
        if pending is not None:
            seconds, pending = pending.result(), None
            if timings is not None:
                timings.append(("muxing", seconds))

    def encode(w: Mp4Writer, clip: Clip) -> float:
        t0 = time.perf_counter()
        w.add(clip.frames, clip.audio if job.audio else None, lead_in=clip.lead_audio if job.audio else None)
        return time.perf_counter() - t0

    carry = Carry(job)
    try:
        for index, segment in enumerate(job.segments):
            before = sum(s.steps for s in job.segments[:index])

            def on_step(done: int, _total: int, before: int = before) -> bool:
                if on_progress is None:
                    return True
                return on_progress(before + done, job.total_steps) is not False

            extra: dict[str, Any] = {}
            if previews is not None and on_preview is not None and makes_previews(engine):

                def shown(p: LivePreview, before: int = before) -> None:
                    assert on_preview is not None
                    on_preview(replace(p, step=before + p.step, total=job.total_steps))

                extra = {"previews": previews, "on_preview": shown}
            clip = engine.generate(carry.job_for(index), segment, on_step, **extra)
            check_clip(job, clip, segment.seconds)
            carry.keep(index, clip)
            if writer is None:
                rate = clip.sample_rate if job.audio else None
                codec = getattr(engine, "video_encoder", "libx264")
                writer = Mp4Writer(
                    out_path, width=job.width, height=job.height, fps=job.fps, sample_rate=rate, codec=codec
                )
                writer.open()
            settle()
            pending = encoder.submit(encode, writer, clip)
            if timings is not None:
                timings.extend(clip.timings)
            for total, counts in ((rows, clip.rows), (cached, clip.cached)):
                if total is not None:
                    for stage, n in counts.items():
                        total[stage] = total.get(stage, 0) + n
            del clip
        settle()
        if writer is None:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "the job has no segments")
        t0 = time.perf_counter()
        info = writer.close()
        if timings is not None:
            timings.append(("muxing", time.perf_counter() - t0))
        return info
    except BaseException:
        if pending is not None:  # never close the file under the encoding thread
            with contextlib.suppress(BaseException):
                pending.result()
        if writer is not None:
            writer.abort()
        raise
    finally:
        encoder.shutdown(wait=True)


def makes_previews(engine: Engine) -> bool:
    """Whether ``engine.generate`` takes ``previews`` and ``on_preview`` (LTX-2 does; an engine
    wrapping another, or a custom one, may not)."""
    try:
        params = inspect.signature(engine.generate).parameters
    except (TypeError, ValueError):
        return False
    return "previews" in params and "on_preview" in params


def check_clip(job: Job, clip: Clip, seconds: int) -> None:
    """An engine must return exactly the frames and samples asked for; anything else is its bug."""
    want = seconds * job.fps
    shape = tuple(clip.frames.shape)
    if shape != (want, job.height, job.width, 3) or clip.fps != job.fps:
        raise ReelgenError(
            ErrorCode.GENERATION_FAILED,
            f"the engine returned frames {shape} at {clip.fps} fps; expected ({want}, {job.height}, "
            f"{job.width}, 3) at {job.fps} fps",
        )
    if job.audio:
        if clip.audio is None or not clip.sample_rate:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "audio is on but the engine returned no audio")
        if clip.audio.shape[-1] != seconds * clip.sample_rate:
            raise ReelgenError(
                ErrorCode.GENERATION_FAILED,
                f"the engine returned {clip.audio.shape[-1]} audio samples; expected {seconds * clip.sample_rate}",
            )
