"""Executors: keep workers running and feed them tasks from the store (``pick(settings)``)."""

from __future__ import annotations

from reelgen.executor.base import Executor, pick

__all__ = ["Executor", "pick"]
