"""``executor = "none"``: this process starts no workers; workers run elsewhere.

For API-only replicas: several ``reelgen serve`` processes behind a load balancer share one
PostgreSQL database, and the workers are separate processes (``python -m reelgen.worker`` on each
GPU host, or Ray engine actors) that take tasks from the store on their own. Such a replica still
runs the sweeper (``Sweeper``), so tasks whose worker died are recovered as long as any replica is
up; several sweepers at once are safe, because every rescue is a conditional write on the attempt
(and ``SKIP LOCKED`` on PostgreSQL). ``notify`` does nothing: remote workers poll the store.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.storage.base import Storage
    from reelgen.store.db import Database

log = logging.getLogger(__name__)


class Sweeper:
    """A daemon thread running ``sweep_once`` every ``SWEEP_INTERVAL`` and ``storage.sweep_temp``
    every ``TEMP_SWEEP_INTERVAL`` until ``stop()`` (the local executor's supervisor does the same)."""

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
        import time

        from reelgen.executor.local import SWEEP_INTERVAL, TEMP_MAX_AGE_SECONDS, TEMP_SWEEP_INTERVAL, sweep_once

        next_temp = 0.0
        while True:
            try:
                sweep_once(self.db, self.settings)
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
            if self._stop.wait(SWEEP_INTERVAL):
                return


class ExternalWorkers:
    """No workers in this process: only the sweeper (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._sweeper: Sweeper | None = None

    def start(self) -> None:
        from reelgen.storage import pick
        from reelgen.store.db import Database

        if self._sweeper is not None:
            raise RuntimeError("the executor is already started")
        self._db = Database.from_settings(self.settings)
        self._sweeper = Sweeper(self.settings, self._db, pick(self.settings))
        self._sweeper.start()
        log.info("API only: no workers in this process; workers elsewhere take tasks from the store")

    def notify(self) -> None:
        """Workers elsewhere poll the store; there is no one here to wake."""

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._db is not None:
            self._db.dispose()
            self._db = None
