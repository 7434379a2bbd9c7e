#!/usr/bin/env python3
"""One GPU, one process, one script: stock diffusers against reelgen's modes, full size, same run.

    python bench/gpu.py                      # H100/H200: the whole comparison (about 6-7 minutes)
    python bench/gpu.py --quick              # fewer stock and stage-1 steps, extrapolated (about 3 minutes)
    python bench/gpu.py --profile ltx-2-tiny --device cpu --quick   # the script's own smoke test, on CPU

What runs, on one engine loaded once (``--load-format dummy``: the profile's full architecture with
random weights built on the GPU; tiny profiles build their tiny weights):

1. **stock**: diffusers' ``LTX2Pipeline`` with its defaults (its own scheduler with the token-count
   shift, 30 steps, CFG + STG + modality guidance = 4 transformer rows a step) at 1280x704x121 with
   audio, on the same components (no LoRA active);
2. **standard**: reelgen's plan of a 5 s 16:9 request with audio (1280x720 output: 8 distilled steps at
   half size, upsampler, 3 refinement steps), rendered to an MP4;
3. **professional**: the same request in professional mode (1920x1080 output, guided stage 1);
4. **professional 15 s** (not with ``--quick``): a 15 s 1080p request, for peak memory; its stage 1
   runs 2 of its steps (memory does not depend on the count) and its time is not reported;
5. ``--accel cache,compile,fp8`` (any of them, in this order, each on top of the previous): the two
   modes again with the profile's step cache (professional only: the distilled stages are never
   cached; all its stage-1 steps run, even with ``--quick``), with regional ``torch.compile`` (a
   warm-up of each run's shapes first, not counted), with torchao FP8 linear layers; each reports the
   PSNR of its video against the eager bf16 run of the same plan and seed (the quality delta; with
   random weights a lower bound on what real weights show; with ``--quick`` the cached run has no
   baseline of all its steps, so no PSNR).

Each run: wall time per stage (CUDA-synchronised), transformer forwards and rows per stage, peak
``torch.cuda.max_memory_allocated``; the ratio of each reelgen mode to stock. ``--quick`` runs 3 stock
steps and ``--stage1-steps 8`` of professional's stage 1 and extrapolates the per-step time to the
full count (marked ``extrapolated``). Results print as a table and go to ``--out`` as JSON; record them
in BENCHMARKS.md by hand. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="ltx-2")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quick", action="store_true", help="3 stock steps, 8 professional stage-1 steps, extrapolated")
    ap.add_argument("--stock-steps", type=int, default=None, help="stock steps to run (default 30, --quick 3)")
    ap.add_argument("--stage1-steps", type=int, default=None, help="professional stage-1 steps to run (default all)")
    ap.add_argument("--accel", default="", help="comma list of cache, compile, fp8: extra runs with those switches")
    ap.add_argument(
        "--devices",
        default="",
        help="a device group, e.g. cuda:0,cuda:1: the professional run again on the group (one process each), "
        "with its scaling over --device",
    )
    ap.add_argument(
        "--parallel",
        default=None,
        help="with --devices: cfg=N,ulysses=N (default cfg=N; ring is refused, see docs/deploy.md)",
    )
    ap.add_argument("--out", default="bench-gpu.json")
    return ap.parse_args(argv)


class Counter:
    """Transformer forwards and rows, and the clock, of one run."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.engine, self.torch = engine, torch
        self.forwards = 0
        self.rows = 0
        self.cuda = engine.device.type == "cuda"

    def hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.forwards += 1
        self.rows += int(hidden.shape[0]) if hidden is not None else 1

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.engine.device)

    def __enter__(self) -> Counter:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.engine.device)
        self.handle = self.engine._components["transformer"].register_forward_pre_hook(self.hook, with_kwargs=True)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sync()
        self.seconds = time.perf_counter() - self.t0
        self.handle.remove()
        self.peak_gib = self.torch.cuda.max_memory_allocated(self.engine.device) / 2**30 if self.cuda else None


def stock(engine: Any, steps: int, full_steps: int) -> dict[str, Any]:
    """diffusers' LTX2Pipeline with its defaults on the engine's components (its own shifting scheduler)."""
    import diffusers
    import torch

    engine.adapters.activate(())
    comps = {k: v for k, v in engine._components.items() if k != "duration_head"}
    pipe = diffusers.LTX2Pipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    layers = int(comps["transformer"].config.num_layers)
    extra = {} if layers > 28 else {"spatio_temporal_guidance_blocks": [layers - 1]}  # tiny smoke test
    gen = torch.Generator(device=engine.device).manual_seed(0)
    args = {"prompt": "a red fox runs through fresh snow at dawn", "height": 704, "width": 1280, "num_frames": 121}
    if layers <= 28:
        args |= {"height": 96, "width": 128}
    with Counter(engine) as c:
        out = pipe(**args, **extra, num_inference_steps=steps, generator=gen, output_type="np", return_dict=False)
    del out
    per_step = c.seconds / steps
    return {
        "name": "stock LTX2Pipeline (defaults)",
        "size": f"{args['width']}x{args['height']}x{args['num_frames']}",
        "steps_run": steps,
        "seconds": round(c.seconds if steps == full_steps else per_step * full_steps, 2),
        "extrapolated": steps != full_steps,
        "transformer_forwards": c.forwards,
        "transformer_rows": c.rows,
        "peak_gib": round(c.peak_gib, 2) if c.peak_gib is not None else None,
    }


def frames_of(path: Path) -> Any:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return round(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse), 2)


def reelgen_run(
    engine: Any, profile: Any, mode: str, seconds: int, stage1_steps: int | None, reference: Any = None
) -> dict[str, Any]:
    """One reelgen generation; ``reference``: the frames of the baseline run to compare against (PSNR)."""
    from reelgen.domain import plan
    from reelgen.generation import render
    from reelgen.schemas import GenerateInput

    job = plan(
        GenerateInput(prompt="a red fox runs through fresh snow at dawn", duration=seconds, mode=mode),  # type: ignore[arg-type]
        profile,
        seed=0,
    )
    planned = {s.name: s.steps for s in job.segments[0].stages}
    if stage1_steps:
        seg = job.segments[0]
        one = replace(seg.stages[0], sigmas=seg.stages[0].sigmas[:stage1_steps])
        job = replace(job, segments=(replace(seg, stages=(one, *seg.stages[1:])),))
    timings: list[tuple[str, float]] = []
    rows: dict[str, int] = {}
    cached: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with Counter(engine) as c:
            info = render(job, engine, Path(tmp) / "out.mp4", timings=timings, rows=rows, cached=cached)
        frames = frames_of(Path(tmp) / "out.mp4")
    stages: dict[str, float] = {}
    for name, s in timings:
        stages[name] = stages.get(name, 0.0) + s
    total = c.seconds
    extrapolated = False
    if stage1_steps and stage1_steps < planned["stage1"]:
        per = stages.get("stage1_step", 0.0) / stage1_steps
        total += per * (planned["stage1"] - stage1_steps)
        extrapolated = True
    return {
        "name": f"reelgen {mode} {seconds} s",
        "size": f"{job.width}x{job.height} (generated {job.generation_width}x{job.generation_height})",
        "steps_planned": planned,
        "seconds": round(total, 2),
        "seconds_measured": round(c.seconds, 2),
        "extrapolated": extrapolated,
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "transformer_forwards": c.forwards,
        "transformer_rows": rows,
        "cached_calls": cached,
        "peak_gib": round(c.peak_gib, 2) if c.peak_gib is not None else None,
        "output": info.as_dict(),
        "psnr_vs_baseline_db": psnr(frames, reference) if reference is not None else None,
        "_frames": frames,
    }


def accelerated(engine: Any, profile: Any, switches: list[str], stage1: int | None, baseline: Any) -> list[Any]:
    """The modes again with each switch of ``switches`` turned on, cumulatively, on the loaded engine."""
    from reelgen.engines.acceleration import StepCache, apply_fp8, check_acceleration

    runs: list[Any] = []
    acc = profile.acceleration
    label: list[str] = []
    for switch in switches:
        if switch == "cache":
            acc = replace(acc, step_cache="taylorseer", compile="off")
            engine.step_cache = StepCache(engine._components["transformer"], acc)
        elif switch == "compile":
            if acc.step_cache != "off":  # the cache's hooks cannot live in compiled blocks
                acc = replace(acc, step_cache="off")
                engine.step_cache = StepCache(engine._components["transformer"], acc)
                label = [x for x in label if x != "cache"]
            acc = replace(acc, compile="regional")
            engine.accelerate(replace(profile, acceleration=acc))  # compiles and warms every mode
        elif switch == "fp8":
            acc = replace(acc, fp8="torchao")
            check_acceleration(replace(profile, acceleration=acc), str(engine.device))
            apply_fp8(engine._components["transformer"])
            if acc.compile != "off":  # recompile the converted blocks, warm-up not counted
                engine.accelerate(replace(profile, acceleration=replace(acc, fp8="off")))
        else:
            raise SystemExit(f"--accel: unknown switch {switch!r} (cache, compile, fp8)")
        label.append(switch)
        current = replace(profile, acceleration=acc)
        for mode in ("standard", "professional"):
            if switch == "cache" and mode == "standard":
                continue  # the distilled stages are never cached: the same run as the baseline
            # a cached stage's steps are not alike (full ones and predicted ones): run them all, never
            # extrapolate from the first few (which run in full)
            steps = None if acc.step_cache != "off" else stage1
            if switch in ("compile", "fp8"):  # compile this run's shapes first (not reported)
                reelgen_run(engine, current, mode, 5, 2 if mode == "professional" else None)
            r = reelgen_run(engine, current, mode, 5, steps, reference=baseline[mode] if steps == stage1 else None)
            r["name"] += " + " + "+".join(label)
            runs.append(r)
    return runs


def trimmed_job(profile: Any, mode: str, seconds: int, stage1_steps: int | None) -> Any:
    """The bench's job for ``mode``: its stage 1 cut to ``stage1_steps`` when given (as ``reelgen_run``)."""
    from reelgen.domain import plan
    from reelgen.schemas import GenerateInput

    inp = GenerateInput(prompt="a red fox runs through fresh snow at dawn", duration=seconds, mode=mode)  # type: ignore[arg-type]
    job = plan(inp, profile, seed=0)
    if stage1_steps:
        seg = job.segments[0]
        one = replace(seg.stages[0], sigmas=seg.stages[0].sigmas[:stage1_steps])
        job = replace(job, segments=(replace(seg, stages=(one, *seg.stages[1:])),))
    return job


def group_run(profile: Any, devices: list[str], flag: str | None, stage1: int | None, single: dict[str, Any]) -> Any:
    """The professional run on a device group (``reelgen.devicegroup``) against ``single``, the same
    run on one device: seconds, the transformer calls split across the group (guidance rows:
    ``split_calls``; the sequence, Ulysses: ``sequence_calls``), scaling and PSNR."""
    from reelgen.devicegroup import render_on_group
    from reelgen.engines.parallel import ParallelSpec

    spec = ParallelSpec.of(profile, flag, devices)
    job = trimmed_job(profile, "professional", 5, stage1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "group.mp4"
        render_on_group(profile, job, out, devices, spec)  # warm-up: the ranks' first calls, not reported
        result = render_on_group(profile, job, out, devices, spec)
        frames = frames_of(out)
    seconds = result.generate_seconds
    return {
        "name": f"reelgen professional 5 s on {','.join(devices)} ({spec.as_text()})",
        "size": single["size"],
        "seconds": seconds,
        "extrapolated": False,
        "single_device_seconds": single["seconds_measured"],
        "scaling": round(single["seconds_measured"] / seconds, 2) if seconds else None,
        "ideal_scaling_of_the_split_calls": spec.cfg * spec.ulysses,
        "split_calls": result.split_calls,
        "sequence_calls": result.sequence_calls,
        "uneven_calls": result.uneven_calls,
        "whole_calls": result.whole_calls,
        "transformer_rows": single["transformer_rows"],
        "peak_gib": None,
        "output": result.info,
        "psnr_vs_baseline_db": psnr(frames, single["_frames"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers
    import torch

    from reelgen.engines import load_engine
    from reelgen.profiles import get_profile

    profile = get_profile(args.profile)
    t0 = time.perf_counter()
    engine = load_engine(profile, device=args.device, load_format="auto" if profile.is_tiny else "dummy")
    load_s = time.perf_counter() - t0
    cuda = engine.device.type == "cuda"
    stock_steps = args.stock_steps or (3 if args.quick else 30)
    stage1 = args.stage1_steps or (8 if args.quick else None)
    stock(engine, 2, 2)  # warm-up: first-call kernel and allocator set-up, not reported
    runs = [stock(engine, stock_steps, 30)]
    reelgen_run(engine, profile, "standard", 5, None)  # warm-up of reelgen's pipelines, not reported
    runs.append(reelgen_run(engine, profile, "standard", 5, None))
    runs.append(reelgen_run(engine, profile, "professional", 5, stage1))
    baseline = {"standard": runs[-2]["_frames"], "professional": runs[-1]["_frames"]}
    if not args.quick:
        memory = reelgen_run(engine, profile, "professional", 15, 2)
        memory |= {"name": "reelgen professional 15 s (memory probe: 2 stage-1 steps)", "seconds": None}
        runs.append(memory)
    runs += accelerated(engine, profile, [a for a in args.accel.split(",") if a], stage1, baseline)
    device_name = torch.cuda.get_device_name(engine.device) if cuda else platform.processor() or platform.machine()
    if args.devices:
        from reelgen.engines.parallel import parse_devices

        group = parse_devices(args.devices)
        professional = next(r for r in runs if r["name"] == "reelgen professional 5 s")
        del engine  # the group's ranks load their own copies
        if cuda:
            torch.cuda.empty_cache()
        runs.append(group_run(profile, group, args.parallel, stage1, professional))
    for r in runs:
        r.pop("_frames", None)
        r.pop("seconds_measured", None)
    base = runs[0]["seconds"]
    for r in runs[1:]:
        if r["seconds"] and "scaling" not in r:  # a group run is compared with one device, not stock
            r["speedup_vs_stock"] = round(base / r["seconds"], 2)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "profile": profile.name,
        "generation": profile.generation,
        "device": device_name,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "command": " ".join(["python", "bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "load_s": round(load_s, 1),
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{result['device']}  {profile.name} (LTX-{profile.generation}, random weights)  load {load_s:.0f} s")
    for r in runs:
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f} s" + (" (extrap.)" if r["extrapolated"] else "")
        ratio = f"  x{r['speedup_vs_stock']} vs stock" if "speedup_vs_stock" in r else ""
        rows = r["transformer_rows"]
        delta = f"  PSNR {r['psnr_vs_baseline_db']} dB" if r.get("psnr_vs_baseline_db") is not None else ""
        if r.get("scaling") is not None:
            delta += f"  x{r['scaling']} vs one device"
        print(f"  {r['name']:<58} {r['size']:<34} {secs:>18}  rows {rows}  peak {r['peak_gib']} GiB{ratio}{delta}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
