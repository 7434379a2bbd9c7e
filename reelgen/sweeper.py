"""The sweeper, one for every executor: recover what dead workers left behind.

``sweep_once`` is one pass over the store: requeue tasks whose lease expired (or fail them once
they have used ``max_attempts``), release holds older than ``max_run_seconds`` plus slack, and
purge idempotency keys past their 24 hours. ``Sweeper`` runs it every ``SWEEP_INTERVAL`` on a
daemon thread, and ``storage.sweep_temp`` (scratch files of a killed writer) and ``purge_uploads``
(uploads no task used within ``upload_retention_seconds``, presigned uploads that never got their
bytes) every ``TEMP_SWEEP_INTERVAL``. The local executor's supervisor, API-only replicas
(``executor = "none"``) and the Ray dispatcher each run one. Several at once are safe: every
rescue is a conditional write on the attempt (and ``SKIP LOCKED`` on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from reelgen.errors import ReelgenError

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.storage.base import Storage
    from reelgen.store.db import Database

__all__ = [
    "HOLD_SLACK_SECONDS",
    "SLOT_PURGE_GRACE_SECONDS",
    "SWEEP_INTERVAL",
    "TEMP_MAX_AGE_SECONDS",
    "TEMP_SWEEP_INTERVAL",
    "PurgeReport",
    "SweepReport",
    "Sweeper",
    "purge_uploads",
    "sweep_once",
]

log = logging.getLogger(__name__)

#: A hold may outlive ``max_run_seconds`` by this much before the sweeper expires it.
HOLD_SLACK_SECONDS = 600.0
#: Scratch files untouched for this long belong to a dead writer.
TEMP_MAX_AGE_SECONDS = 3600.0
#: An expired presigned upload is purged this long after its expiry (a PUT that claimed it in time is done).
SLOT_PURGE_GRACE_SECONDS = 3600.0
SWEEP_INTERVAL = 2.0
TEMP_SWEEP_INTERVAL = 60.0


@dataclass(frozen=True)
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    purged_idempotency_keys: int = 0


def sweep_once(db: Database, settings: Settings, now: datetime | None = None) -> SweepReport:
    """One rescuer pass: recover tasks whose lease expired, then expire holds older than their TTL.

    A task whose lease ran out goes back to the queue as a new attempt, or fails (releasing its
    credits) once it has used ``max_attempts``; the store decides which, in one conditional write
    per task. A hold older than ``max_run_seconds + HOLD_SLACK_SECONDS`` is released and its task
    fails with ``TIMEOUT``. Idempotency keys older than their 24 hours are deleted.
    """
    from reelgen.domain import TaskStatus
    from reelgen.store import idempotency, tasks

    when = now or datetime.now(UTC)
    rescued: list[tuple[str, TaskStatus]] = db.run(lambda conn: tasks.rescue_expired(conn, when), immediate=True)
    expired: list[str] = db.run(
        lambda conn: tasks.expire_holds(conn, max_age_seconds=settings.max_run_seconds + HOLD_SLACK_SECONDS, now=when),
        immediate=True,
    )
    purged: int = db.run(lambda conn: idempotency.purge_expired(conn, when), immediate=True)
    report = SweepReport(
        requeued=[t for t, s in rescued if s == TaskStatus.PENDING],
        failed=[t for t, s in rescued if s != TaskStatus.PENDING],
        expired=expired,
        purged_idempotency_keys=purged,
    )
    for task_id in report.requeued:
        log.warning("task %s: its worker's lease expired; requeued as a new attempt", task_id)
    for task_id in report.failed:
        log.error("task %s: lease expired on its last allowed attempt; failed and credits released", task_id)
    for task_id in report.expired:
        log.error("task %s: hold expired after %.0f s; failed with TIMEOUT", task_id, settings.max_run_seconds)
    return report


@dataclass(frozen=True)
class PurgeReport:
    unused_uploads: int = 0
    expired_slots: int = 0


def purge_uploads(db: Database, storage: Storage, settings: Settings, now: datetime | None = None) -> PurgeReport:
    """Delete uploads no task named within ``upload_retention_seconds`` (0: keep them) and presigned
    uploads that expired without their bytes, with their objects. Each row goes by a conditional
    delete before its object, so an upload a task names meanwhile is kept whole."""
    from reelgen.store import uploads

    when = now or datetime.now(UTC)
    unused = expired = 0
    if settings.upload_retention_seconds > 0:
        cutoff = when - timedelta(seconds=settings.upload_retention_seconds)
        for upload_id, key in db.run(lambda conn: uploads.unused_before(conn, cutoff)):
            if db.run(partial(uploads.purge_unused, upload_id=upload_id), immediate=True):
                storage.delete(key)
                unused += 1
    slot_cutoff = when - timedelta(seconds=SLOT_PURGE_GRACE_SECONDS)
    for slot_id in db.run(lambda conn: uploads.stale_slots(conn, slot_cutoff)):
        if db.run(partial(uploads.purge_expired_slot, slot_id=slot_id, cutoff=slot_cutoff), immediate=True):
            storage.delete(uploads.storage_key(slot_id))  # a PUT that claimed it and died mid-way
            expired += 1
    if unused or expired:
        log.info("purged %d unused upload(s) and %d expired presigned upload(s)", unused, expired)
    return PurgeReport(unused, expired)


class Sweeper:
    """A daemon thread running ``sweep_once`` every ``SWEEP_INTERVAL`` and ``storage.sweep_temp``
    every ``TEMP_SWEEP_INTERVAL`` until ``stop()``; a failed pass is logged and retried."""

    def __init__(self, settings: Settings, db: Database, storage: Storage) -> None:
        self.settings, self.db, self.storage = settings, db, storage
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reelgen-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        next_temp = 0.0
        while True:
            try:
                sweep_once(self.db, self.settings)
            except ReelgenError as exc:  # the store is unavailable: said already, no traceback needed
                log.warning("sweeper pass failed (%s); retrying in %.0f s", exc, SWEEP_INTERVAL)
            except Exception:
                log.exception("sweeper pass failed; retrying in %.0f s", SWEEP_INTERVAL)
            if time.monotonic() >= next_temp:
                next_temp = time.monotonic() + TEMP_SWEEP_INTERVAL
                try:
                    removed = self.storage.sweep_temp(TEMP_MAX_AGE_SECONDS)
                    if removed:
                        log.info("removed %d orphaned scratch file(s)", removed)
                except OSError:
                    log.exception("sweeping scratch files failed")
                try:
                    purge_uploads(self.db, self.storage, self.settings)
                except Exception:
                    log.exception("purging uploads failed; retrying in %.0f s", TEMP_SWEEP_INTERVAL)
            if self._stop.wait(SWEEP_INTERVAL):
                return
