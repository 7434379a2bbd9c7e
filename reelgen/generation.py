"""One generation end to end: run every segment of a ``Job`` on an engine and write one MP4.

``render`` is what the worker and the local command share: one engine call per segment (a
multi-shot job has one per shot, each with its own derived seed), clips streamed into the MP4 as
they are made, progress reported over the whole job, and the file moved into place only when
complete. ``run_local`` is ``reelgen generate --local``: the API's validation, the same planning,
and ``render``, in this process, with no server.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Clip, Engine
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from PIL import Image

    from reelgen.domain import Job
    from reelgen.media import MediaInfo, Mp4Writer

#: ``on_progress(done_steps, total_steps)``; returning False cancels the job.
ProgressCallback = Callable[[int, int], bool | None]

RANDOM_WEIGHTS_WARNING = (
    "warning: this engine has random weights ({source}): the video and its soundtrack are noise. "
    "Shapes, durations, audio and timing are real; load real weights with --weights DIR for real output."
)


def render(
    job: Job,
    engine: Engine,
    out_path: str | Path,
    on_progress: ProgressCallback | None = None,
    *,
    timings: list[tuple[str, float]] | None = None,
) -> MediaInfo:
    """Generate every segment of ``job`` with ``engine`` and write them, joined, to ``out_path``.

    ``on_progress(done, total)`` is called after every denoising step with counts over the whole
    job (``total == job.total_steps``); returning False stops at that step boundary and raises
    ``Cancelled`` (no file is left behind). ``timings``, when given, receives every segment's stage
    timings plus ``muxing`` (the time spent encoding and writing the MP4).
    """
    from reelgen.media import Mp4Writer

    per_segment = job.total_steps // len(job.segments)
    writer: Mp4Writer | None = None
    try:
        for index, segment in enumerate(job.segments):
            before = index * per_segment

            def on_step(done: int, _total: int, before: int = before) -> bool:
                if on_progress is None:
                    return True
                return on_progress(before + done, job.total_steps) is not False

            clip = engine.generate(job, segment, on_step)
            _check_clip(job, clip, segment.seconds)
            t0 = time.perf_counter()
            if writer is None:
                rate = clip.sample_rate if job.audio else None
                writer = Mp4Writer(out_path, width=job.width, height=job.height, fps=job.fps, sample_rate=rate)
                writer.open()
            writer.add(clip.frames, clip.audio if job.audio else None)
            if timings is not None:
                timings.extend(clip.timings)
                timings.append(("muxing", time.perf_counter() - t0))
            del clip
        if writer is None:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "the job has no segments")
        t0 = time.perf_counter()
        info = writer.close()
        if timings is not None:
            timings.append(("muxing", time.perf_counter() - t0))
        return info
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _check_clip(job: Job, clip: Clip, seconds: int) -> None:
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


# ---------------------------------------------------------------------------------------------
# reelgen generate --local
# ---------------------------------------------------------------------------------------------
def _image_url(value: str) -> str:
    """An ``--image`` value as the API takes it: URLs and data URIs as given, a local file as a data URI."""
    if value[:16].lower().startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ReelgenError(ErrorCode.INVALID_IMAGE, f"--image {value!r}: no such file")
    from reelgen.client import data_uri

    return data_uri(path)


def _shot(value: str) -> dict[str, Any]:
    prompt, sep, seconds = value.rpartition("=")
    if not sep or not prompt.strip():
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"--shot {value!r}: write it as PROMPT=SECONDS")
    try:
        return {"prompt": prompt, "duration": int(seconds)}
    except ValueError:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"--shot {value!r}: {seconds!r} is not a whole number") from None


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``/generate`` body the command line describes (validated later by ``parse_generate``)."""
    from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO

    images = [_image_url(v) for v in args.image]
    inp: dict[str, Any] = {
        "prompt": args.prompt,
        "duration": args.duration,
        "mode": args.mode,
        "audio": not args.no_audio,
    }
    if args.aspect_ratio:
        inp["aspect_ratio"] = args.aspect_ratio
    if images:
        inp["image_urls"] = images
    if args.shot:
        inp["multi_shots"] = True
        inp["multi_prompt"] = [_shot(s) for s in args.shot]
    return {"model": args.model or (IMAGE_TO_VIDEO if images else TEXT_TO_VIDEO), "input": inp}


def _default_output(prompt: str) -> Path:
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:6]) or "video"
    return Path(f"{slug}.mp4")


def run_local(args: argparse.Namespace) -> int:
    """``reelgen generate PROMPT --local ...``: validate, plan, load the engine, render, report."""
    from reelgen.domain import plan
    from reelgen.engines import load_engine
    from reelgen.inputs import FetchPolicy, fit_image, load_images
    from reelgen.profiles import get_profile
    from reelgen.schemas import parse_generate

    request = parse_generate(build_body(args))
    profile = get_profile(args.profile, args.profiles_file, weights=args.weights)
    # The same checks as the server: http(s) fetched under the address rules, data: URIs size-capped.
    images: list[Image.Image] = load_images(request.input.image_urls or (), FetchPolicy())
    job = plan(request.input, profile, seed=args.seed, start_image_size=images[0].size if images else None)
    if images:
        job = replace(
            job,
            start_image=fit_image(images[0], job.width, job.height),
            end_image=fit_image(images[1], job.width, job.height) if len(images) > 1 else None,
        )
    out = Path(args.output) if args.output else _default_output(request.input.prompt)
    t0 = time.perf_counter()
    engine = load_engine(profile, device=args.device, load_format=args.load_format)
    load_s = time.perf_counter() - t0
    if engine.random_weights:
        print(RANDOM_WEIGHTS_WARNING.format(source=getattr(engine, "source", "random")), file=sys.stderr)

    def progress(done: int, total: int) -> bool:
        if not args.json and sys.stderr.isatty():
            print(f"\rdenoising step {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
        return True

    t0 = time.perf_counter()
    info = render(job, engine, out, progress)
    gen_s = time.perf_counter() - t0
    summary = {
        "path": str(out),
        "model": request.model,
        "profile": profile.name,
        "seed": args.seed,
        "random_weights": engine.random_weights,
        **info.as_dict(),
        "load_seconds": round(load_s, 3),
        "generate_seconds": round(gen_s, 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        audio = f", audio {info.sample_rate} Hz" if info.has_audio else ", no audio"
        print(
            f"wrote {out}: {info.duration:.2f} s, {info.width}x{info.height} @ {info.fps:g} fps, "
            f"{len(job.segments)} shot(s){audio} ({gen_s:.1f} s)"
        )
        if engine.random_weights:
            print("note: random weights — the content is noise.")
    return 0
