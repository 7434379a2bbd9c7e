#!/usr/bin/env python3
"""Soak the ledger (RELIABILITY 3, jack_hammer style): random money movements from many processes.

    python bench/soak.py --seconds 60                       # SQLite file in a temporary directory
    python bench/soak.py --seconds 60 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/soak.py --seconds 15 --processes 8 --accounts 5 --json

``--processes`` OS processes (default 8), each with its own connections, spend ``--seconds`` on
random operations over ``--accounts`` accounts (default 5): submits through ``service.submit``
(parse, price, reserve and create in one transaction), claims then completions or failures (what
a worker does), cancellations of pending tasks, grants, and the executor's sweeper pass. Refused
submits (``INSUFFICIENT_CREDITS``) and a busy database (``SERVICE_UNAVAILABLE``, retried inside the
store first) are expected under this load and counted; any other exception is an error.

Afterwards it runs ``ledger.check`` (no drift: cached balances equal the entry sums, every movement
is two entries summing to zero, every hold resolved once and as its task's state says) and counts
entries = 2 x movements. Exit status 0 only when all of that holds and no process saw an error.
``tests/test_soak.py`` runs it for a few seconds in CI.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: operation -> weight
OPERATIONS = {"submit": 6, "complete": 3, "fail": 2, "cancel": 1, "grant": 1, "sweep": 1}


def _context(url: str, data_dir: str, *, migrate: bool = False) -> Any:
    from reelgen import service
    from reelgen.config import Settings
    from reelgen.profiles import get_profile
    from reelgen.storage import pick
    from reelgen.store.db import Database

    settings = Settings(data_dir=Path(data_dir), database_url=url, secret_key="soak-not-secret", lease_seconds=60)
    db = Database(url)
    if migrate:
        db.upgrade()
    profile = get_profile(settings.profile)
    return service.Context(db=db, settings=settings, profile=profile, storage=pick(settings), secret="soak-not-secret")


def _one(ctx: Any, rng: random.Random, op: str, accounts: list[str], worker: str) -> str:
    """Run one operation; returns its outcome name."""
    from reelgen import service
    from reelgen.store import ledger, tasks
    from reelgen.sweeper import sweep_once

    now = datetime.now(UTC)
    if op == "submit":
        body = {
            "model": "kling-3-0-text-to-video",
            "input": {"prompt": "soak", "duration": rng.randint(3, 15), "audio": rng.random() < 0.5},
        }
        service.submit(ctx, rng.choice(accounts), body)
        return "submitted"
    if op in ("complete", "fail"):
        claimed = ctx.db.run(lambda c: tasks.claim(c, worker_id=worker, lease_seconds=60, now=now), immediate=True)
        if claimed is None:
            return "queue empty"
        if op == "complete":
            won = ctx.db.run(
                lambda c: tasks.complete(
                    c,
                    claimed.id,
                    claimed.attempt,
                    result_key=f"{claimed.id}.mp4",
                    duration=3.0,
                    has_audio=True,
                    now=now,
                ),
                immediate=True,
            )
        else:
            won = ctx.db.run(
                lambda c: tasks.fail(c, claimed.id, claimed.attempt, code="GENERATION_FAILED", message="soak", now=now),
                immediate=True,
            )
        return ("completed" if op == "complete" else "failed") if won else "lost the task (cancelled meanwhile)"
    if op == "cancel":
        pending = ctx.db.run(lambda c: tasks.list_for_account(c, rng.choice(accounts), status="pending", limit=5))
        if not pending:
            return "nothing to cancel"
        ctx.db.run(lambda c: tasks.cancel(c, rng.choice(pending).id, now), immediate=True)
        return "cancelled"
    if op == "grant":
        ctx.db.run(lambda c: ledger.grant(c, rng.choice(accounts), rng.randint(100, 2000), now), immediate=True)
        return "granted"
    sweep_once(ctx.db, ctx.settings)
    return "swept"


def _process(url: str, data_dir: str, accounts: list[str], seconds: float, seed: int, results: Any) -> None:
    """One soak process: random operations until the deadline; reports its outcome counts."""
    from reelgen.errors import ErrorCode, ReelgenError

    #: refused for a reason the caller is told (no credits; the task was taken first; busy, retry)
    expected = (ErrorCode.INSUFFICIENT_CREDITS, ErrorCode.NOT_CANCELLABLE, ErrorCode.SERVICE_UNAVAILABLE)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    rng = random.Random(seed)
    ctx = _context(url, data_dir)
    names, weights = zip(*OPERATIONS.items(), strict=True)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            op = rng.choices(names, weights)[0]
            try:
                counts[_one(ctx, rng, op, accounts, f"soak-{seed}")] += 1
            except ReelgenError as exc:
                if exc.code in expected:
                    counts[str(exc.code)] += 1
                else:
                    errors.append(f"{op}: {exc!r}")
            except Exception as exc:
                errors.append(f"{op}: {exc!r}")
    finally:
        ctx.db.dispose()
        results.put((dict(counts), errors))


def _setup(url: str, data_dir: str, n_accounts: int) -> list[str]:
    from reelgen.store import keys, ledger

    ctx = _context(url, data_dir, migrate=True)
    try:

        def create(conn: Any) -> list[str]:
            ids = [keys.create_account(conn, f"soak-{i}") for i in range(n_accounts)]
            for account in ids:
                ledger.grant(conn, account, 5000, datetime.now(UTC))
            return ids

        result: list[str] = ctx.db.run(create, immediate=True)
        return result
    finally:
        ctx.db.dispose()


def _verify(url: str, data_dir: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from reelgen.store import ledger
    from reelgen.store.tables import ledger_entries, movements, tasks

    ctx = _context(url, data_dir)
    try:

        def read(conn: Any) -> dict[str, Any]:
            count = sa.select(sa.func.count())
            return {
                "problems": ledger.check(conn),
                "movements": conn.execute(count.select_from(movements)).scalar_one(),
                "entries": conn.execute(count.select_from(ledger_entries)).scalar_one(),
                "tasks": dict(conn.execute(sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)).all()),
            }

        result: dict[str, Any] = ctx.db.run(read)
        return result
    finally:
        ctx.db.dispose()


def soak(url: str, data_dir: str, *, seconds: float, processes: int, n_accounts: int) -> dict[str, Any]:
    """Run the soak; returns counts, errors and the ledger verdict."""
    accounts = _setup(url, data_dir, n_accounts)
    mp = multiprocessing.get_context("spawn")
    results = mp.Queue()
    procs = [
        mp.Process(target=_process, args=(url, data_dir, accounts, seconds, seed, results)) for seed in range(processes)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    counts: Counter[str] = Counter()
    errors: list[str] = []
    for _ in procs:
        got, errs = results.get(timeout=seconds + 300)
        counts.update(got)
        errors.extend(errs)
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            errors.append(f"process {p.pid} exited with {p.exitcode}")
    elapsed = time.monotonic() - started
    verdict = _verify(url, data_dir)
    return {
        "seconds": round(elapsed, 1),
        "processes": processes,
        "accounts": n_accounts,
        "operations": dict(sorted(counts.items())),
        "operations_per_second": round(sum(counts.values()) / seconds, 1),
        "errors": errors,
        **verdict,
        "ok": not errors and not verdict["problems"] and verdict["entries"] == 2 * verdict["movements"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--accounts", type=int, default=5)
    p.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reelgen-soak-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'soak.db'}"
        report = soak(url, tmp, seconds=args.seconds, processes=args.processes, n_accounts=args.accounts)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"{report['processes']} processes x {report['seconds']} s over {report['accounts']} accounts")
        for name, n in report["operations"].items():
            print(f"  {name:<24} {n}")
        print(f"  {report['operations_per_second']} operations/s; tasks by state: {report['tasks']}")
        print(f"  movements {report['movements']}, entries {report['entries']}")
        for line in report["problems"]:
            print(f"  drift: {line}")
        for line in report["errors"]:
            print(f"  error: {line}")
        print("soak OK: no drift" if report["ok"] else "soak FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
