#!/usr/bin/env python3
"""Benchmark one generation: time per stage and peak memory, for a profile and a request.

    python bench/engine.py --profile ltx-2-tiny --duration 5
    python bench/engine.py --profile ltx-2-tiny --duration 15 --mode professional --json
    python bench/engine.py --profile ltx-2 --load-format dummy --device cuda:0 --duration 5

Stages: engine load, text encoding, every denoising step (stage 1 and stage 2), latent upsampling,
video VAE decode, audio decode (audio VAE + vocoder), muxing (H.264/AAC encode + MP4 write).
Memory: peak RSS of this process (CPU) and ``torch.cuda.max_memory_allocated`` (GPU) during the
measured run. By default one warm-up generation runs first, so first-call costs (lazy kernel and
allocator set-up) are not counted as steps; ``--warmup 0`` measures a cold run. On a shared machine,
``--repeat N`` measures N runs and reports the fastest. Results go to
BENCHMARKS.md by hand; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used: less sensitive than wall time to other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def add_request_args(ap: argparse.ArgumentParser) -> None:
    """The engine and request options every engine benchmark takes (``bench/previews.py`` too)."""
    ap.add_argument("--profile", default="ltx-2-tiny")
    ap.add_argument("--profiles-file")
    ap.add_argument("--weights", help="weights directory or hub id (overrides the profile)")
    ap.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    ap.add_argument("--device", default=None, help="cpu or cuda:N (default: cuda:0 if present)")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--mode", choices=["standard", "professional"], default="standard")
    ap.add_argument("--no-audio", action="store_true")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_request_args(ap)
    ap.add_argument("--aspect-ratio", choices=["16:9", "9:16", "1:1"], default="16:9")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="generations before the measured one (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="measured runs; the fastest is reported (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reelgen.domain import plan
    from reelgen.engines import load_engine
    from reelgen.generation import render
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile, args.profiles_file, weights=args.weights)
    inp = GenerateInput(
        prompt="a red fox runs through fresh snow at dawn, cinematic",
        duration=args.duration,
        mode=args.mode,
        audio=not args.no_audio,
        aspect_ratio=args.aspect_ratio,
    )
    job = plan(inp, profile, seed=args.seed)
    t0 = time.perf_counter()
    engine = load_engine(profile, device=args.device, load_format=args.load_format)
    load_s = time.perf_counter() - t0
    device = str(getattr(engine, "device", args.device))
    cuda = device.startswith("cuda")
    rss_after_load = _current_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.warmup):
            render(job, engine, Path(tmp) / f"warmup{i}.mp4")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        best: tuple[float, float, list[tuple[str, float]], Any, dict[str, int], dict[str, int]] | None = None
        for i in range(max(1, args.repeat)):
            timings: list[tuple[str, float]] = []
            rows: dict[str, int] = {}
            cached: dict[str, int] = {}
            cpu0, t0 = _cpu_s(), time.perf_counter()
            info = render(job, engine, Path(tmp) / f"bench{i}.mp4", timings=timings, rows=rows, cached=cached)
            total, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
            if best is None or total < best[0]:
                best = (total, cpu, timings, info, rows, cached)
        assert best is not None
        total_s, cpu_s, timings, info, rows, cached = best
    steps = {name: [round(s, 4) for n, s in timings if n == name] for name in ("stage1_step", "stage2_step")}
    stages: dict[str, float] = {}
    for name, seconds in timings:
        stages[name] = stages.get(name, 0.0) + seconds
    import diffusers

    return {
        "profile": profile.name,
        "load_format": args.load_format,
        "request": {
            "duration": args.duration,
            "mode": args.mode,
            "audio": not args.no_audio,
            "aspect_ratio": args.aspect_ratio,
        },
        "job": {
            "width": job.width,
            "height": job.height,
            "generation_width": job.generation_width,
            "generation_height": job.generation_height,
            "frames_generated": job.segments[0].num_frames,
            "steps": job.total_steps,
        },
        # per denoising stage: planned steps, transformer rows run (guidance adds rows), seconds
        "stages": [
            {
                "name": st.name,
                "width": st.width,
                "height": st.height,
                "steps": len(steps.get(f"{st.name}_step", [])),
                "planned_steps": st.steps * len(job.segments),
                "transformer_rows": rows.get(st.name, 0),
                "cached_calls": cached.get(st.name, 0),
                "seconds": round(sum(steps.get(f"{st.name}_step", [])), 4),
            }
            for st in job.segments[0].stages
        ],
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "random_weights": engine.random_weights,
        "warmup_runs": args.warmup,
        "measured_runs": max(1, args.repeat),
        "load_s": round(load_s, 3),
        "total_s": round(total_s, 3),
        "cpu_s": round(cpu_s, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "steps_s": steps,
        "peak_rss_mib": round(_rss_mib(), 1),
        "rss_after_load_mib": round(rss_after_load, 1),
        "cuda_max_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "output": info.as_dict(),
    }


def _print(r: dict[str, Any]) -> None:
    req, job = r["request"], r["job"]
    where = f"{r['device']} [{r['device_name']}], {r['torch_threads']} threads"
    print(f"profile {r['profile']} ({r['load_format']}) on {where}")
    print(
        f"request {req['duration']} s {req['mode']} {req['aspect_ratio']} audio={req['audio']} -> "
        f"{job['width']}x{job['height']} (generated at {job['generation_width']}x{job['generation_height']}), "
        f"{job['frames_generated']} frames generated, {job['steps']} steps"
    )
    for st in r["stages"]:
        print(
            f"  {st['name']}: {st['width']}x{st['height']}, {st['steps']} steps, "
            f"{st['transformer_rows']} transformer rows, {st['seconds']:.3f} s"
        )
    if r["random_weights"]:
        print("random weights: the output is noise (timings and memory are real)")
    print(f"  {'engine load':<18}{r['load_s']:>9.3f} s")
    for name, seconds in r["stages_s"].items():
        count = len(r["steps_s"].get(name, []))
        per = f"  ({count} x {seconds / count:.4f} s)" if count else ""
        print(f"  {name:<18}{seconds:>9.3f} s{per}")
    print(f"  {'total (render)':<18}{r['total_s']:>9.3f} s  ({r['cpu_s']:.3f} CPU s)")
    print(f"  load average after: {' '.join(str(x) for x in r['load_average'])}")
    print(f"  peak RSS {r['peak_rss_mib']:.0f} MiB (after load {r['rss_after_load_mib']:.0f} MiB)")
    if r["cuda_max_memory_allocated_gib"] is not None:
        print(f"  CUDA max memory allocated {r['cuda_max_memory_allocated_gib']:.2f} GiB")
    out = r["output"]
    print(f"  file: {out['duration']} s, {out['width']}x{out['height']}, audio={out['has_audio']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
