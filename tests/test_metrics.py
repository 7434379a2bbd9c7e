"""``GET /metrics``: Prometheus text computed from the store (both databases)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from reelgen import service
from reelgen.api.app import create_app
from reelgen.store import tasks
from reelgen.store.db import Database
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import generate_body, make_account
from tests.test_api import assert_error


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_reflect_the_store(client: TestClient, ctx: service.Context) -> None:
    acc = make_account(ctx, credits=10_000)
    ids = [
        client.post("/api/v1/generate", json=generate_body(), headers=acc.headers).json()["data"]["id"]
        for _ in range(4)
    ]
    t0 = service.utcnow() - timedelta(seconds=60)
    done = ctx.db.run(lambda c: tasks.claim(c, worker_id="w", lease_seconds=600, now=t0), immediate=True)
    assert done is not None and done.id == ids[0]
    ctx.db.run(
        lambda c: tasks.complete(
            c, done.id, 1, result_key="x.mp4", duration=3.0, has_audio=True, now=t0 + timedelta(seconds=4)
        ),
        immediate=True,
    )
    # a worker that stopped heartbeating: its lease ran out a while ago
    stuck = ctx.db.run(lambda c: tasks.claim(c, worker_id="gone", lease_seconds=5, now=t0), immediate=True)
    assert stuck is not None and stuck.id == ids[1]
    client.post(f"/api/v1/tasks/{ids[2]}/cancel", headers=acc.headers)

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m[("reelgen_queue_depth", (("model", "kling-3-0-text-to-video"),))] == 1
    for status, n in (("pending", 1), ("processing", 1), ("completed", 1), ("failed", 0), ("cancelled", 1)):
        assert m[("reelgen_tasks", (("status", status),))] == n
    assert m[("reelgen_generation_seconds_bucket", (("le", "2.5"),))] == 0
    assert m[("reelgen_generation_seconds_bucket", (("le", "5.0"),))] == 1
    assert m[("reelgen_generation_seconds_bucket", (("le", "+Inf"),))] == 1
    assert m[("reelgen_generation_seconds_count", ())] == 1
    assert abs(m[("reelgen_generation_seconds_sum", ())] - 4.0) < 0.01
    assert m[("reelgen_credits_captured_total", ())] == 126
    assert m[("reelgen_worker_leases", (("state", "live"),))] == 0
    assert m[("reelgen_worker_leases", (("state", "expired"),))] == 1
    assert m[("reelgen_worker_heartbeat_age_seconds", ())] >= 59
    assert ("reelgen_local_workers_alive", ()) not in m  # this app runs no executor


def test_metrics_token(tmp_path: Path, db: Database) -> None:
    ctx = make_ctx(make_settings(tmp_path, db, metrics_token="scrape-me"), db)
    with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx), raise_server_exceptions=False) as client:
        assert_error(client.get("/metrics"), 401, "INVALID_API_KEY")
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "INVALID_API_KEY")
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "reelgen_tasks" in ok.text


def test_local_worker_health(live: LiveServer) -> None:
    deadline = time.monotonic() + 60
    while True:
        m: dict[Any, float] = samples(httpx.get(f"{live.url}/metrics").text)
        if m.get(("reelgen_local_workers_alive", ())) == 1:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.1)
