#!/usr/bin/env python3
"""Queue: claim and submit latency of the fair queue with 1k, 10k and 100k pending tasks (issue 19).
(Named ``fair_queue.py``, not ``queue.py``: every bench script runs with ``bench/`` first on its path,
where that name would shadow the standard library's ``queue`` for the other scripts.)

    python bench/fair_queue.py                                    # SQLite, 1k/10k/100k pending, 100 accounts
    python bench/fair_queue.py --database-url postgresql+psycopg://127.0.0.1/test --json
    python bench/fair_queue.py --pending 1000 --samples 50
    # the queue's own work without the WAL flush of each commit (what the test fixtures run with):
    python bench/fair_queue.py --database-url 'postgresql+psycopg://127.0.0.1/test?options=-csynchronous_commit%3Doff'

For each queue length: a fresh schema (a SQLite file in a temporary directory, or a PostgreSQL
schema dropped afterwards) migrated to head; 100 accounts with credits; the pending tasks spread
over the accounts round-robin, inserted in bulk (rows as ``tasks.create`` writes them, with their
fair-queue rows and virtual times spread out as after a busy day); then, timed one by one:

* **claim**: ``tasks.claim`` in its own immediate transaction (the fair pick, the fenced move and
  the account's charge), as a worker runs it;
* **submit**: ``tasks.create`` plus ``ledger.reserve`` in one immediate transaction, as the API
  runs it (a random account each time);
* **empty**: an immediate transaction that only runs ``SELECT 1`` (the floor: pool, round trips,
  BEGIN/COMMIT on this machine);
* **write**: an immediate transaction that rewrites one row and commits (the floor of any
  durable write: on PostgreSQL with ``synchronous_commit = on`` this is the WAL flush);
* **position**: ``tasks.queue_position`` of the task in the middle of the claim order (what a
  task view reads; it counts the tasks ahead, so it grows with the position).

Prints median and p95 milliseconds of each. The figures go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# This file shares its name with the standard library's ``queue`` (which the database drivers
# import): keep its folder off the import path, and the repository on it.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

import sqlalchemy as sa  # noqa: E402

from reelgen.store import fair, keys, ledger, tasks  # noqa: E402
from reelgen.store.db import Database  # noqa: E402
from reelgen.store.tables import account_queue  # noqa: E402
from reelgen.store.tables import tasks as tasks_table  # noqa: E402

ACCOUNTS = 100
PROFILE = "ltx-2-tiny"
COST_US = 5_000_000  # every task is expected to take 5 s of GPU time
T0 = datetime(2026, 11, 30, tzinfo=UTC)


@contextmanager
def fresh_database(url: str | None) -> Iterator[Database]:
    """A migrated, empty database: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if url is None:
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite:///{tmp}/queue.db")
            db.upgrade()
            try:
                yield db
            finally:
                db.dispose()
        return
    schema = f"bench_queue_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    parsed = sa.make_url(url)
    given = parsed.query.get("options", "")
    options = " ".join([*([given] if isinstance(given, str) and given else []), f"-csearch_path={schema}"])
    scoped = parsed.update_query_dict({"options": options})
    db = Database(scoped.render_as_string(hide_password=False))
    try:
        db.upgrade()
        yield db
    finally:
        db.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def insert_rows(db: Database, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    def go(conn: Any) -> None:
        conn.execute(sa.insert(table), rows)

    db.run(go, immediate=True)


def fill(db: Database, pending: int) -> list[str]:
    """100 funded accounts and ``pending`` pending tasks over them; returns the account ids."""

    def make_accounts(conn: Any) -> list[str]:
        ids = [keys.create_account(conn, f"bench-{i}", now=T0) for i in range(ACCOUNTS)]
        for account in ids:
            ledger.grant(conn, account, 10**12, T0)
        return ids

    accounts: list[str] = db.run(make_accounts, immediate=True)
    rng = random.Random(19)
    base = {
        "model": "kling-3-0-text-to-video",
        "profile": PROFILE,
        "status": "pending",
        "input": '{"duration":5,"prompt":"a fox"}',
        "prompt": "a fox",
        "price": 210,
        "seed": 7,
        "attempt": 0,
        "failures": 0,
        "max_attempts": 3,
        "progress": 0,
        "request_class": f"{PROFILE}|kling-3-0-text-to-video|standard|3-5|audio",
        "cost_us": COST_US,
    }
    # each account's virtual time and weight as after hours of uneven use; its tasks start one
    # after the other from there, as tasks.create tags them
    vtime = {a: rng.randrange(0, 3600 * 10**6) for a in accounts}
    weight = {a: rng.choice((1, 1, 1, 2, 4)) for a in accounts}
    chunk = 5000
    for start in range(0, pending, chunk):
        rows = []
        for i in range(start, min(pending, start + chunk)):
            account = accounts[i % ACCOUNTS]
            rows.append(
                {
                    **base,
                    "id": uuid.uuid4().hex,
                    "account_id": account,
                    "created_at": T0 + timedelta(microseconds=i),
                    "tier": 1,
                    "vstart": vtime[account],
                }
            )
            vtime[account] += COST_US // weight[account]
        insert_rows(db, tasks_table, rows)
    insert_rows(db, account_queue, [{"account_id": a, "vtime": vtime[a], "weight": weight[a]} for a in accounts])
    db.run(lambda conn: conn.exec_driver_sql("ANALYZE"), immediate=True)
    return accounts


def timed(samples: int, fn: Callable[[int], object]) -> dict[str, float]:
    seconds: list[float] = []
    for i in range(samples):
        started = time.perf_counter()
        fn(i)
        seconds.append(time.perf_counter() - started)
    ms = sorted(s * 1000 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3)}


def measure(db: Database, accounts: list[str], samples: int) -> dict[str, dict[str, float]]:
    rng = random.Random(7)
    now = T0 + timedelta(days=1)

    def claim(i: int) -> None:
        row = db.run(
            lambda conn: tasks.claim(conn, worker_id=f"bench-{i}", lease_seconds=60, now=now, profile=PROFILE),
            immediate=True,
        )
        assert row is not None

    def submit(i: int) -> None:
        account = rng.choice(accounts)

        def go(conn: Any) -> None:
            row = tasks.create(
                conn,
                account_id=account,
                model="kling-3-0-text-to-video",
                profile=PROFILE,
                input={"duration": 5, "prompt": "a fox"},
                prompt="a fox",
                price=210,
                seed=i,
                max_attempts=3,
                now=now + timedelta(microseconds=i),
                request_class=f"{PROFILE}|kling-3-0-text-to-video|standard|3-5|audio",
            )
            ledger.reserve(conn, account, row.id, 210, now)

        db.run(go, immediate=True)

    middle = db.run(
        lambda conn: conn.execute(
            sa.select(tasks_table.c.id)
            .where(tasks_table.c.status == "pending", tasks_table.c.profile == PROFILE)
            .order_by(*fair.claim_order())
            .offset(db.run(lambda c: tasks.count_pending(c)) // 2)
            .limit(1)
        ).scalar_one()
    )

    def position(_: int) -> None:
        assert db.run(lambda conn: tasks.queue_position(conn, middle)) is not None

    def empty(_: int) -> None:
        db.run(lambda conn: conn.exec_driver_sql("SELECT 1").scalar(), immediate=True)

    def write(_: int) -> None:
        one = sa.update(account_queue).where(account_queue.c.account_id == accounts[0])
        db.run(lambda conn: conn.execute(one.values(weight=account_queue.c.weight)), immediate=True)

    return {
        "empty": timed(samples, empty),
        "write": timed(samples, write),
        "claim": timed(samples, claim),
        "submit": timed(samples, submit),
        "position": timed(max(5, samples // 10), position),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", help="PostgreSQL URL (default: a SQLite file)")
    p.add_argument("--pending", type=int, action="append", help="queue lengths (default 1000, 10000, 100000)")
    p.add_argument("--samples", type=int, default=200, help="claims and submits timed per queue length")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = []
    for pending in args.pending or [1000, 10_000, 100_000]:
        with fresh_database(args.database_url) as db:
            accounts = fill(db, pending)
            figures = measure(db, accounts, args.samples)
            results.append({"backend": db.engine.dialect.name, "pending": pending, "accounts": ACCOUNTS, **figures})
            if not args.json:
                r = results[-1]
                print(
                    f"{r['backend']:10} {pending:>7} pending: "
                    + "  ".join(f"{k} {v['median_ms']:.2f} ms (p95 {v['p95_ms']:.2f})" for k, v in figures.items()),
                    flush=True,
                )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
