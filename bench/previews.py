#!/usr/bin/env python3
"""The cost of live previews: one generation with and without them, as the worker runs it.

    python bench/previews.py --profile ltx-2-tiny --duration 5 --rounds 5
    python bench/previews.py --profile ltx-2 --load-format dummy --device cuda:0 --every 4 --json

Each round renders the same request (same seed) twice, in alternating order: once without
previews, once with the profile's ``previews`` (``--every``/``--frames``/``--max-side`` override
them) handed to the worker's ``livepreview.Publisher``, which encodes each preview as WebP, stores it
(local storage in a temporary directory) and records it in a SQLite store against a real claimed
task, exactly as a worker does; the publisher's last write is waited for, as the worker waits for it
before completing. Reported per variant: the median wall time and the median CPU time of this
process (user + system, all threads: less sensitive to other load on a shared machine), and the
overhead of previews on each (also the median of each round's back-to-back difference); and the
previews' own cost measured inside each run with previews: the engine's time decoding them (on the
render thread) plus the publisher thread's CPU time, as a share of that run's wall time — on a busy
machine the A/B figures carry the load's noise, this share does not. Also the previews made.
Both MP4s of a round are compared byte for byte (previews must not change the video). Results go
to BENCHMARKS.md by hand; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from engine import add_request_args  # bench/engine.py: bench/ is first on the path of a bench script

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_request_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, help="previews every N steps too (default: the profile's)")
    ap.add_argument("--frames", type=int, help="frames per preview (default: the profile's)")
    ap.add_argument("--max-side", type=int, help="longest side in pixels (default: the profile's)")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds of (without, with) (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    return ap.parse_args(argv)


class _Store:
    """A SQLite store and local storage in ``root`` with one account, for real claimed tasks."""

    def __init__(self, root: Path, profile: str) -> None:
        from reelgen.storage.local import LocalStorage
        from reelgen.store import keys, ledger
        from reelgen.store.db import Database

        self.profile = profile
        self.db = Database(f"sqlite:///{root / 'bench.db'}")
        self.db.upgrade()
        self.storage = LocalStorage(root / "outputs")

        def fund(conn: Any) -> str:
            account: str = keys.create_account(conn, "bench")
            ledger.grant(conn, account, 1_000_000, datetime.now(UTC))
            return account

        self.account = self.db.run(fund, immediate=True)

    def claimed_task(self) -> tuple[str, int]:
        from reelgen.store import ledger, tasks

        def go(conn: Any) -> tuple[str, int]:
            now = datetime.now(UTC)
            row = tasks.create(
                conn,
                account_id=self.account,
                model="kling-3-0-text-to-video",
                profile=self.profile,
                input={"prompt": "bench", "duration": 5},
                prompt="bench",
                price=1,
                seed=0,
                max_attempts=1,
                now=now,
            )
            ledger.reserve(conn, self.account, row.id, 1, now)
            claimed = tasks.claim(conn, worker_id="bench", lease_seconds=3600, now=now, profile=self.profile)
            assert claimed is not None and claimed.id == row.id
            return claimed.id, claimed.attempt

        result: tuple[str, int] = self.db.run(go, immediate=True)
        return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from reelgen.domain import plan
    from reelgen.engines import load_engine
    from reelgen.generation import render
    from reelgen.livepreview import Publisher
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile, args.profiles_file, weights=args.weights)
    overrides = {k: v for k, v in (("every", args.every), ("frames", args.frames), ("max_side", args.max_side)) if v}
    spec = replace(profile.previews, enabled=True, **overrides)
    inp = GenerateInput(
        prompt="a red fox runs through fresh snow at dawn, cinematic",
        duration=args.duration,
        mode=args.mode,
        audio=not args.no_audio,
    )
    job = plan(inp, profile, seed=args.seed)
    engine = load_engine(profile, device=args.device, load_format=args.load_format)
    device = str(getattr(engine, "device", args.device))
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    preview_s: list[float] = []
    publisher_cpu: list[float] = []
    share: list[float] = []
    made: list[int] = []
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = _Store(root, profile.name)

        def once(variant: str, out: Path) -> tuple[float, float, list[tuple[str, float]], Publisher | None]:
            timings: list[tuple[str, float]] = []
            publisher = None
            if variant == "on":
                task_id, attempt = store.claimed_task()  # the worker's claim: not part of the generation
                publisher = Publisher(store.db, store.storage, task_id, attempt)
            cpu0, t0 = _cpu_s(), time.perf_counter()
            try:
                if publisher is None:
                    render(job, engine, out, timings=timings)
                else:
                    render(job, engine, out, timings=timings, previews=spec, on_preview=publisher)
            finally:
                if publisher is not None:
                    publisher.close()  # as the worker: the last preview is recorded before completing
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0, _cpu_s() - cpu0, timings, publisher

        for i in range(args.warmup + args.rounds):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            outs: dict[str, bytes] = {}
            for variant in order:
                out = root / f"{variant}{i}.mp4"
                wall, cpu, timings, publisher = once(variant, out)
                outs[variant] = out.read_bytes()
                if i < args.warmup:
                    continue
                figures[variant].append((wall, cpu))
                if publisher is not None:
                    engine_s = sum(s for name, s in timings if name == "preview")
                    preview_s.append(engine_s)
                    publisher_cpu.append(publisher.cpu_seconds)
                    # the previews' own cost in this very run: the engine's decoding (on the render
                    # thread) plus the publisher thread's CPU, against the run's wall time
                    share.append(100 * (engine_s + publisher.cpu_seconds) / wall)
                    made.append(publisher.published)
            identical = identical and outs["off"] == outs["on"]
        store.db.dispose()

    def median(variant: str, k: int) -> float:
        return statistics.median(f[k] for f in figures[variant])

    wall_off, wall_on, cpu_off, cpu_on = median("off", 0), median("on", 0), median("off", 1), median("on", 1)
    # each round's two runs ran back to back: their difference is less exposed to drifting load
    paired = {
        k: statistics.median(
            100 * (on[k] - off[k]) / off[k] for off, on in zip(figures["off"], figures["on"], strict=True)
        )
        for k in (0, 1)
    }
    return {
        "profile": profile.name,
        "device": device,
        "machine": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} torch threads)",
        "request": {"duration": args.duration, "mode": args.mode, "audio": not args.no_audio, "seed": args.seed},
        "job": {"width": job.width, "height": job.height, "steps": job.total_steps},
        "previews": {"every": spec.every, "frames": spec.frames, "max_side": spec.max_side},
        "rounds": args.rounds,
        "wall_s": {"off": round(wall_off, 3), "on": round(wall_on, 3)},
        "cpu_s": {"off": round(cpu_off, 3), "on": round(cpu_on, 3)},
        "overhead_pct": {
            "wall": round(100 * (wall_on - wall_off) / wall_off, 2),
            "cpu": round(100 * (cpu_on - cpu_off) / cpu_off, 2),
            "wall_paired": round(paired[0], 2),
            "cpu_paired": round(paired[1], 2),
        },
        "engine_preview_s": round(statistics.median(preview_s), 4),
        "publisher_cpu_s": round(statistics.median(publisher_cpu), 4),
        "preview_share_pct": round(statistics.median(share), 2),
        "previews_per_run": statistics.median(made),
        "all_wall_s": {k: [round(w, 3) for w, _ in v] for k, v in figures.items()},
        "all_cpu_s": {k: [round(c, 3) for _, c in v] for k, v in figures.items()},
        "videos_identical": identical,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['profile']} on {result['device']} ({result['machine']}), request {result['request']}")
    print(f"previews {result['previews']}, {result['previews_per_run']} per run, {result['rounds']} rounds (median)")
    for key in ("wall_s", "cpu_s"):
        off, on = result[key]["off"], result[key]["on"]
        kind = key.removesuffix("_s")
        pct, paired = result["overhead_pct"][kind], result["overhead_pct"][f"{kind}_paired"]
        print(f"  {kind:>4}: without {off:.3f} s, with {on:.3f} s, overhead {pct:+.2f}% (paired rounds {paired:+.2f}%)")
    print(
        f"  previews' own time: engine {result['engine_preview_s']:.4f} s + publisher CPU "
        f"{result['publisher_cpu_s']:.4f} s per run = {result['preview_share_pct']:.2f}% of the run"
    )
    print(f"  videos identical with and without previews: {result['videos_identical']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
