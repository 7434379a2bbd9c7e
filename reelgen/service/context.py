"""``Context``: what every service function needs (database, settings, profile, storage, clock),
built once by the app's lifespan or the CLI and passed in; nothing here is global."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reelgen.config import Settings
from reelgen.profiles import Profile, get_profile
from reelgen.ratelimit import RateLimiter
from reelgen.storage.base import Storage
from reelgen.store.db import Database

__all__ = ["Context", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """What every service function needs; built once by the app's lifespan or the CLI."""

    db: Database
    settings: Settings
    profile: Profile
    storage: Storage
    secret: str
    clock: Callable[[], datetime] = field(default=utcnow)
    #: Called after a task is committed (the executor wakes an idle worker instead of waiting for its poll).
    on_submit: Callable[[], None] | None = None
    #: The per-account request-rate buckets of this process.
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)

    @classmethod
    def from_settings(cls, settings: Settings, *, storage: Storage | None = None) -> Context:
        from reelgen.storage import pick

        db = Database.from_settings(settings)
        db.upgrade()
        profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
        return cls(
            db=db,
            settings=settings,
            profile=profile,
            storage=storage or pick(settings),
            secret=settings.resolved_secret(),
        )
