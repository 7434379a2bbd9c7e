#!/usr/bin/env python3
"""Load: 50 simulated users against ``reelgen serve`` on the embedded default (RELIABILITY 22).

    python bench/load.py                          # 50 users, 2 minutes, tiny profile, SQLite + local worker
    python bench/load.py --users 20 --seconds 30 --json

Starts ``reelgen serve`` (tiny profile, SQLite and one local CPU worker, all defaults) in a fresh
data directory, gives every user an account with plenty of credits, runs locust headless
(``bench/locustfile.py``: submit, poll every second until done, fetch the download link and the
MP4, read credits), stops the server, then runs ``reelgen ledger check``. Prints throughput,
p50/p99 latency per endpoint, response counts by status, task outcomes and the ledger verdict;
exit status 0 only with zero 5xx responses, no request that got no response, and an intact ledger.
The figures go to BENCHMARKS.md by hand; nothing here is asserted in the test suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env.update(REELGEN_DATA_DIR=str(data_dir), REELGEN_PORT=str(port), PYTHONPATH=str(ROOT))
    return env


def _keys(data_dir: Path, users: int) -> list[str]:
    """One account with 10^7 credits and one key per user, written straight to the store."""
    from reelgen.config import Settings
    from reelgen.store import keys, ledger
    from reelgen.store.db import Database

    settings = Settings(data_dir=data_dir)
    db = Database.from_settings(settings)
    secret = settings.resolved_secret()
    try:

        def create(conn: Any) -> list[str]:
            out = []
            for i in range(users):
                account = keys.create_account(conn, f"load-{i}")
                ledger.grant(conn, account, 10**7, datetime.now(UTC))
                out.append(keys.issue_key(conn, account, f"load-{i}", secret).key)
            return out

        result: list[str] = db.run(create, immediate=True)
        return result
    finally:
        db.dispose()


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"reelgen serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"reelgen serve was not ready within {timeout:.0f} s")
        time.sleep(0.25)


def _stats(csv_path: Path) -> list[dict[str, Any]]:
    rows = []
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"] or 0),
                    "p99_ms": float(row["99%"] or 0),
                    "max_ms": float(row["Max Response Time"] or 0),
                }
            )
    return rows


def run(users: int, seconds: int, spawn_rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="reelgen-load-") as tmp:
        tmp_path = Path(tmp)
        data_dir, port = tmp_path / "data", _free_port()
        env = _env(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        subprocess.run([sys.executable, "-m", "reelgen", "db", "upgrade"], env=env, check=True, capture_output=True)
        keys_file = tmp_path / "keys.txt"
        keys_file.write_text("\n".join(_keys(data_dir, users)))
        log = (tmp_path / "serve.log").open("wb")
        server = subprocess.Popen([sys.executable, "-m", "reelgen", "serve"], env=env, stdout=log, stderr=log)
        try:
            _wait_ready(url, server)
            status_file = tmp_path / "status.json"
            locust = [
                sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
                "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{seconds}s",
                "--host", url, "--csv", str(tmp_path / "load"), "--only-summary", "--stop-timeout", "10",
                "--exit-code-on-error", "0", "--loglevel", "WARNING",
            ]  # fmt: skip
            started = time.monotonic()
            subprocess.run(
                locust,
                env={**env, "REELGEN_LOAD_KEYS": str(keys_file), "REELGEN_LOAD_STATUS": str(status_file)},
                check=True,
                capture_output=True,
            )
            wall = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=90)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
        check = subprocess.run(
            [sys.executable, "-m", "reelgen", "ledger", "check"], env=env, capture_output=True, text=True
        )
        counts = json.loads(status_file.read_text())
        server_errors = sum(n for s, n in counts["statuses"].items() if s.startswith("5"))
        tracebacks = (tmp_path / "serve.log").read_text(errors="replace").count("Traceback")
        stats = _stats(tmp_path / "load_stats.csv")
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "users": users,
            "seconds": seconds,
            "wall_s": round(wall, 1),
            "endpoints": stats,
            "statuses": counts["statuses"],
            "tasks": counts["tasks"],
            "server_errors": server_errors,
            "no_response": counts["statuses"].get("no response", 0),
            "server_log_tracebacks": tracebacks,
            "ledger_check": (check.stdout + check.stderr).strip(),
            "ok": server_errors == 0 and counts["statuses"].get("no response", 0) == 0 and check.returncode == 0,
        }


def _print(report: dict[str, Any]) -> None:
    print(f"{report['users']} users for {report['seconds']} s ({report['date']}), wall {report['wall_s']} s")
    print("| endpoint | requests | failures | req/s | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for e in report["endpoints"]:
        print(
            f"| {e['name']} | {e['requests']} | {e['failures']} | {e['rps']:.1f} | "
            f"{e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['max_ms']:.0f} |"
        )
    print(f"responses by status: {report['statuses']}; tasks seen by users: {report['tasks']}")
    print(f"5xx: {report['server_errors']}; no response: {report['no_response']}; ledger: {report['ledger_check']}")
    print("load OK" if report["ok"] else "load FAILED")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=int, default=120)
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = run(args.users, args.seconds, args.spawn_rate)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
