"""``/readyz`` counts the live workers of the served profile, loading (weights, warm-up) or ready, on
both databases: a worker is ``loading`` from before its engine loads until it is warm, ``ready`` while
it claims, gone when it drains; a worker that died without saying so stops counting after a lease."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from reelgen import service
from reelgen.attempt import Worker
from reelgen.store import workers
from reelgen.store.db import Database


def counts(client: TestClient) -> dict[str, int]:
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["data"]["status"] == "ready"
    return r.json()["data"]["workers"]  # type: ignore[no-any-return]


def test_worker_rows_by_state_and_staleness(db: Database) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    lease = timedelta(seconds=30)

    def count(now: datetime, profile: str = "ltx-2-tiny") -> dict[str, int]:
        return db.run(lambda c: workers.count(c, profile=profile, now=now, stale_after=lease))

    db.run(lambda c: workers.register(c, "w1", profile="ltx-2-tiny", device="cuda:0", now=t0), immediate=True)
    db.run(lambda c: workers.register(c, "w2", profile="ltx-2-tiny", device="cuda:1", now=t0), immediate=True)
    db.run(lambda c: workers.register(c, "x", profile="other", device="cpu", now=t0), immediate=True)
    assert count(t0) == {"loading": 2, "ready": 0} and count(t0, "other") == {"loading": 1, "ready": 0}
    assert db.run(lambda c: workers.seen(c, "w1", now=t0 + lease, state="ready"), immediate=True)
    assert count(t0 + lease) == {"loading": 1, "ready": 1}
    # w2 was last seen a lease ago and a second: a worker that died without removing its row
    assert count(t0 + lease + timedelta(seconds=1)) == {"loading": 0, "ready": 1}
    db.run(lambda c: workers.remove(c, "w1"), immediate=True)
    assert count(t0 + lease) == {"loading": 1, "ready": 0}
    assert not db.run(lambda c: workers.seen(c, "w1", now=t0), immediate=True)  # no row, nothing moves
    # a restarted worker with the same id starts over as loading
    db.run(lambda c: workers.register(c, "w2", profile="ltx-2-tiny", device="cuda:1", now=t0 + lease), immediate=True)
    assert count(t0 + lease) == {"loading": 1, "ready": 0}


def test_readyz_follows_a_worker_from_loading_to_ready_to_gone(client: TestClient, ctx: service.Context) -> None:
    assert counts(client) == {"loading": 0, "ready": 0}
    worker = Worker(ctx.settings, device="cpu", worker_id="readyz-test")
    loader = threading.Thread(target=worker.load)  # builds the tiny engine: seconds, not milliseconds
    loader.start()
    seen = []
    while loader.is_alive():
        seen.append(counts(client))
        time.sleep(0.05)
    loader.join()
    assert {"loading": 1, "ready": 0} in seen and worker.ready
    assert counts(client) == {"loading": 0, "ready": 1}
    runner = threading.Thread(target=worker.run)
    runner.start()
    worker.drain("test over")
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert counts(client) == {"loading": 0, "ready": 0}


def test_a_worker_whose_row_was_lost_shows_again_at_its_next_heartbeat(
    client: TestClient, ctx: service.Context
) -> None:
    """A connection lost while committing leaves a worker's row unknown: the next heartbeat makes it
    again (as ready) instead of refreshing nothing, so ``/readyz`` keeps counting a live worker."""
    worker = Worker(ctx.settings, device="cpu", worker_id="lost-row")
    worker.load()
    assert counts(client) == {"loading": 0, "ready": 1}
    ctx.db.run(lambda c: workers.remove(c, "lost-row"), immediate=True)
    assert counts(client) == {"loading": 0, "ready": 0}
    time.sleep(ctx.settings.heartbeat_seconds)
    worker._alive()
    assert counts(client) == {"loading": 0, "ready": 1}
    worker.drain("test over")
    worker.run()
    assert counts(client) == {"loading": 0, "ready": 0}
