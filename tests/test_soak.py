"""Soak reconciliation (RELIABILITY 3): ``bench/soak.py`` for a few seconds in CI.

8 OS processes, each with its own connections, make random submits (through ``service.submit``),
completions, failures, cancellations, grants and sweeper passes over 5 accounts; afterwards the
ledger shows no drift and entries = 2 x movements. ``python bench/soak.py --seconds 60`` is the
full run (``--database-url`` for PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from reelgen.store import ledger
from reelgen.store.db import Database

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 10


def test_eight_processes_of_random_movements_leave_no_drift(db: Database, tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", str(SECONDS), "--json"]
    run = subprocess.run(
        [*cmd, "--database-url", db.url], cwd=tmp_path, capture_output=True, text=True, timeout=SECONDS + 400
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads(run.stdout)
    assert report["ok"] and report["errors"] == [] and report["problems"] == []
    assert report["processes"] == 8 and report["accounts"] == 5
    assert report["entries"] == 2 * report["movements"] > 0
    done = report["operations"]
    for outcome in ("submitted", "completed", "failed", "granted", "swept"):
        assert done.get(outcome, 0) > 0, done
    # the same verdict from this process, on the same database
    assert db.run(ledger.check) == []
