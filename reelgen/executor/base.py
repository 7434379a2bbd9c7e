"""The executor protocol: run workers that take queued tasks from the store.

The store is the queue and the source of truth: an executor only keeps workers alive, tells them
when new work may be waiting, and recovers tasks whose worker died (the sweeper). Cancelling a
task is a store write; the worker running it learns at its next heartbeat and stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from reelgen.config import Settings


class Executor(Protocol):
    def start(self) -> None:
        """Start the workers and the supervisor; returns once they are launched (engines load in the background)."""
        ...

    def notify(self) -> None:
        """A task was queued: wake idle workers now instead of at their next poll."""
        ...

    def stop(self) -> None:
        """Drain: ask every worker to finish or hand back its task within the grace period, then stop them."""
        ...


def pick(settings: Settings) -> Executor:
    """The executor for ``settings.executor``; each backend module is imported only when chosen."""
    if settings.executor == "local":
        from reelgen.executor.local import LocalExecutor

        return LocalExecutor(settings)
    if settings.executor == "none":
        from reelgen.executor.external import ExternalWorkers

        return ExternalWorkers(settings)
    if settings.executor == "ray":
        from reelgen.executor.ray import RayExecutor

        return RayExecutor(settings)
    raise ValueError(f"unknown executor {settings.executor!r}")  # pragma: no cover - Settings restricts it
