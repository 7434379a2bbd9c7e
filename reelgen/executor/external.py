"""``executor = "none"``: this process starts no workers; workers run elsewhere.

For API-only replicas: several ``reelgen serve`` processes behind a load balancer share one
PostgreSQL database, and the workers are separate processes (``python -m reelgen.worker`` on each
GPU host, or Ray engine actors) that take tasks from the store on their own. Such a replica still
runs the sweeper (``reelgen.sweeper``), so tasks whose worker died are recovered as long as any replica is
up; several sweepers at once are safe, because every rescue is a conditional write on the attempt
(and ``SKIP LOCKED`` on PostgreSQL). ``notify`` does nothing: remote workers poll the store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.store.db import Database
    from reelgen.sweeper import Sweeper

log = logging.getLogger(__name__)


class ExternalWorkers:
    """No workers in this process: only the sweeper (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._db: Database | None = None
        self._sweeper: Sweeper | None = None

    def start(self) -> None:
        from reelgen.storage import pick
        from reelgen.store.db import Database
        from reelgen.sweeper import Sweeper

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
