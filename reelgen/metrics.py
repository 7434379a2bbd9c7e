"""``GET /metrics`` in the Prometheus text format, computed from the store at scrape time.

Every number comes from the database, so any API process answers for the whole deployment:

* ``reelgen_queue_depth{model}``: pending tasks per model;
* ``reelgen_tasks{status}``: tasks per status;
* ``reelgen_generation_seconds``: histogram of claim-to-completion times of completed tasks;
* ``reelgen_credits_captured_total``: credits charged for successful generations;
* worker health: ``reelgen_worker_leases{state="live"|"expired"}`` (processing tasks whose worker
  still heartbeats, or stopped: the sweeper will requeue them), ``reelgen_worker_heartbeat_age_seconds``
  (the oldest heartbeat among processing tasks) and, where this process runs the local executor,
  ``reelgen_local_workers_alive`` (its live worker subprocesses).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from reelgen.domain import TaskStatus
from reelgen.store import stats

if TYPE_CHECKING:
    from reelgen.store.db import Database

__all__ = ["BUCKETS", "CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bounds (seconds) of the generation-time histogram: tiny CPU runs up to full-size GPU runs.
BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)


class _StoreCollector(Collector):
    def __init__(self, db: Database, now: datetime, local_workers: int | None) -> None:
        self.db, self.now, self.local_workers = db, now, local_workers

    def collect(self) -> Iterator[Metric]:
        s = self.db.run(lambda conn: stats.collect(conn, self.now, BUCKETS))
        depth = GaugeMetricFamily("reelgen_queue_depth", "Pending tasks per model.", labels=["model"])
        for model, n in sorted(s.pending_by_model.items()):
            depth.add_metric([model], n)
        yield depth
        by_status = GaugeMetricFamily("reelgen_tasks", "Tasks per status.", labels=["status"])
        for status in TaskStatus:
            by_status.add_metric([status.value], s.tasks_by_status.get(status.value, 0))
        yield by_status
        yield HistogramMetricFamily(
            "reelgen_generation_seconds",
            "Claim-to-completion time of completed tasks.",
            buckets=[(repr(b), n) for b, n in s.run_buckets] + [("+Inf", s.run_count)],
            sum_value=s.run_seconds_sum,
        )
        yield CounterMetricFamily(
            "reelgen_credits_captured", "Credits charged for successful generations.", value=s.credits_captured
        )
        leases = GaugeMetricFamily(
            "reelgen_worker_leases", "Processing tasks by lease state (expired = worker stopped).", labels=["state"]
        )
        leases.add_metric(["live"], s.live_leases)
        leases.add_metric(["expired"], s.expired_leases)
        yield leases
        yield GaugeMetricFamily(
            "reelgen_worker_heartbeat_age_seconds",
            "Age of the oldest heartbeat among processing tasks (0 when none is processing).",
            value=s.oldest_heartbeat_age or 0.0,
        )
        if self.local_workers is not None:
            yield GaugeMetricFamily(
                "reelgen_local_workers_alive",
                "Live worker subprocesses of this process's local executor.",
                value=self.local_workers,
            )


def render(db: Database, now: datetime, local_workers: int | None = None) -> bytes:
    """The metrics page (a fresh registry per scrape: nothing is kept in the process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreCollector(db, now, local_workers))
    return generate_latest(registry)
