"""``reelgen generate --local`` and ``--plan``: the API's validation and planning, in this process.

``run_local`` validates the command line as the server validates a request body, plans it on the
profile, loads the engine and renders the MP4 with ``reelgen.generation.render`` (no server, no
store). ``print_plan`` stops after planning and prints the plan as JSON (``Job.as_dict``): the
stages, sizes, sigmas, guidance, LoRAs and conditions the engine would run, without loading
weights.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from PIL import Image

    from reelgen.domain import Job
    from reelgen.profiles import Profile
    from reelgen.schemas import GenerateRequest


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


def _lora(value: str) -> dict[str, Any]:
    name, sep, strength = value.partition(":")
    if not name.strip():
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"--lora {value!r}: write it as NAME or NAME:STRENGTH")
    if not sep:
        return {"name": name}
    try:
        return {"name": name, "strength": float(strength)}
    except ValueError:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"--lora {value!r}: {strength!r} is not a number") from None


def _seed(args: argparse.Namespace) -> int:
    return int(args.seed) if args.seed is not None else 0


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
    if args.continuity:  # validated with the rest (without --shot: INVALID_INPUT, unless cut)
        inp["multi_shot_continuity"] = args.continuity
    if args.lora:
        inp["loras"] = [_lora(v) for v in args.lora]
    if args.camera:
        camera: dict[str, Any] = {"type": args.camera}
        if args.camera_strength is not None:
            camera["strength"] = args.camera_strength
        inp["camera_control"] = camera
    elif args.camera_strength is not None:
        raise ReelgenError(ErrorCode.INVALID_INPUT, "--camera-strength needs --camera")
    if getattr(args, "enhance_prompt", False):
        inp["enhance_prompt"] = True
    # Kling's own fields, when given
    kling = {
        "negative_prompt": args.negative_prompt,
        "cfg_scale": args.cfg_scale,
        "seed": _seed(args),
        "external_task_id": args.external_task_id,
    }
    inp.update({k: v for k, v in kling.items() if v is not None})
    return {"model": args.model or (IMAGE_TO_VIDEO if images else TEXT_TO_VIDEO), "input": inp}


def output_path(prompt: str) -> Path:
    """The default file name for a prompt: its first words, slugged."""
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:6]) or "video"
    return Path(f"{slug}.mp4")


def _planned(args: argparse.Namespace) -> tuple[GenerateRequest, Profile, Job]:
    """Validate the command line as the API validates a body, fetch the images, plan the job."""
    from reelgen.domain import plan
    from reelgen.inputs import FetchPolicy, fit_image, load_images
    from reelgen.profiles import get_profile
    from reelgen.schemas import parse_generate

    request = parse_generate(build_body(args))
    profile = get_profile(args.profile, args.profiles_file, weights=args.weights)
    # The same checks as the server: http(s) fetched under the address rules, data: URIs size-capped.
    images: list[Image.Image] = load_images(request.input.image_urls or (), FetchPolicy())
    job = plan(request.input, profile, seed=_seed(args), start_image_size=images[0].size if images else None)
    if images:
        job = replace(
            job,
            start_image=fit_image(images[0], job.width, job.height),
            end_image=fit_image(images[1], job.width, job.height) if len(images) > 1 else None,
        )
    return request, profile, job


def print_plan(args: argparse.Namespace) -> int:
    """``reelgen generate PROMPT --plan``: the plan as one JSON object; no weights are loaded."""
    request, _, job = _planned(args)
    print(json.dumps({"model": request.model, **job.as_dict()}, indent=2))
    return 0


def run_local(args: argparse.Namespace) -> int:
    """``reelgen generate PROMPT --local ...``: validate, plan, load the engine, render, report.

    With ``--devices a,b,...`` the task runs on a device group (``reelgen.devicegroup``): one process
    per device, the transformer's work shared as ``--parallel`` (or the profile's ``parallel``) says."""
    from reelgen.engines.parallel import ParallelSpec, parse_devices
    from reelgen.generation import RANDOM_WEIGHTS_WARNING

    request, profile, job = _planned(args)
    out = Path(args.output) if args.output else output_path(request.input.prompt)
    devices = parse_devices(getattr(args, "devices", None))
    extra: dict[str, Any] = {}
    if len(devices) > 1 and any(s.enhancement is not None for s in job.segments):
        # a worker on a device group enhances on rank 0 and sends the ranks the enhanced job; this
        # one-off command starts its ranks with the job as planned, so it does not
        raise ReelgenError(ErrorCode.INVALID_INPUT, "--enhance-prompt runs on one device here: drop --devices")
    if len(devices) > 1:
        from reelgen.devicegroup import render_on_group

        spec = ParallelSpec.of(profile, getattr(args, "parallel", None), devices)
        show = not args.json and sys.stderr.isatty()
        result = render_on_group(profile, job, out, devices, spec, args.load_format, show)
        if result.random_weights:
            print(RANDOM_WEIGHTS_WARNING.format(source=result.source), file=sys.stderr)
        media, load_s, gen_s, random_weights = (
            result.info,
            result.load_seconds,
            result.generate_seconds,
            result.random_weights,
        )
        extra = {
            "devices": devices,
            "parallel": spec.as_text(),
            "split_calls": result.split_calls,
            "scheduled_calls": result.scheduled_calls,
            "ahead_calls": result.ahead_calls,
        }
    else:
        media, load_s, gen_s, random_weights = _render_here(
            args, job, profile, out, devices[0] if devices else args.device
        )
    summary = {
        "path": str(out),
        "model": request.model,
        "profile": profile.name,
        "seed": _seed(args),
        "random_weights": random_weights,
        **media,
        "load_seconds": round(load_s, 3),
        "generate_seconds": round(gen_s, 3),
        **extra,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        audio = f", audio {media['sample_rate']} Hz" if media["has_audio"] else ", no audio"
        print(
            f"wrote {out}: {media['duration']:.2f} s, {media['width']}x{media['height']} @ {media['fps']:g} fps, "
            f"{len(job.segments)} shot(s){audio} ({gen_s:.1f} s)"
        )
        if random_weights:
            print("note: random weights — the content is noise.")
    return 0


def _render_here(
    args: argparse.Namespace, job: Job, profile: Profile, out: Path, device: str | None
) -> tuple[dict[str, Any], float, float, bool]:
    """One process, one device: load, render; (media facts, load seconds, generate seconds, random weights)."""
    from reelgen.engines import load_engine
    from reelgen.generation import RANDOM_WEIGHTS_WARNING, enhance, render

    t0 = time.perf_counter()
    engine = load_engine(profile, device=device, load_format=args.load_format)
    load_s = time.perf_counter() - t0
    if engine.random_weights:
        print(RANDOM_WEIGHTS_WARNING.format(source=getattr(engine, "source", "random")), file=sys.stderr)

    def progress(done: int, total: int) -> bool:
        if not args.json and sys.stderr.isatty():
            print(f"\rdenoising step {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
        return True

    t0 = time.perf_counter()
    job, enhanced = enhance(job, engine, progress)
    info = render(job, engine, out, progress)
    media = info.as_dict() | ({"enhanced_prompts": list(enhanced)} if enhanced else {})
    return media, load_s, time.perf_counter() - t0, engine.random_weights
