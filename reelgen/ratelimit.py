"""The per-account request rate: a token bucket in each API process's memory.

Each account's bucket holds up to ``rpm`` tokens and refills at ``rpm / 60`` per second, so an
account may burst its whole minute's allowance and then proceeds at the steady rate. Every
authenticated request takes one token; with none left it is refused (429 ``RATE_LIMITED`` with
``Retry-After``). The bucket is per process: with N API replicas behind a balancer an account gets
up to N x rpm (the cap on active tasks, by contrast, is checked in the database and holds globally).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    #: seconds until the bucket is full again
    reset_seconds: int
    #: seconds until the next token (only meaningful when refused)
    retry_after: int

    @property
    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """Token buckets keyed by account id (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # account -> (tokens, at)

    def take(self, account_id: str, rpm: int) -> Decision | None:
        """Take one token from the account's bucket; None when ``rpm`` is 0 (unlimited)."""
        if rpm <= 0:
            return None
        rate = rpm / 60.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(account_id, (float(rpm), now))
            tokens = min(float(rpm), tokens + (now - at) * rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[account_id] = (tokens, now)
        return Decision(
            allowed=allowed,
            limit=rpm,
            remaining=int(tokens),
            reset_seconds=math.ceil((rpm - tokens) / rate),
            retry_after=max(1, math.ceil((1.0 - tokens) / rate)),
        )
