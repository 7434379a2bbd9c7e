"""Admission: who is calling (an API key → an account) and how much they may do (request rate,
active tasks). The HTTP layer parses the ``Authorization`` header; this module only sees the key.
Operators override an account's limits through ``set_limits`` and its place in the fair queue
(weight, tier) through ``set_schedule`` (both ``reelgen keys limits``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.service.context import Context
from reelgen.store import fair, keys, limits

__all__ = ["Admission", "admit", "limits_of", "set_limits", "set_schedule"]


@dataclass(frozen=True)
class Admission:
    account_id: str
    #: ``X-RateLimit-*`` for the response (empty when the account's rate is unlimited)
    headers: dict[str, str]


def limits_of(ctx: Context, conn: Connection, account_id: str) -> limits.Limits:
    """The account's effective limits: its overrides, else the settings' defaults."""
    return limits.get(
        conn,
        account_id,
        default_rpm=ctx.settings.rate_limit_rpm,
        default_active=ctx.settings.max_active_tasks,
    )


def admit(ctx: Context, key: str) -> Admission:
    """Authenticate an API key and take one token of its account's request rate: ``INVALID_API_KEY``,
    or 429 ``RATE_LIMITED`` with ``Retry-After`` and the ``X-RateLimit-*`` headers."""
    if not key.startswith("sk-"):
        raise ReelgenError(ErrorCode.INVALID_KEY_FORMAT, "API keys start with 'sk-'.")

    def read(conn: Connection) -> tuple[str | None, limits.Limits | None]:
        account_id = keys.verify_key(conn, key, ctx.secret, ctx.clock())
        return account_id, None if account_id is None else limits_of(ctx, conn, account_id)

    account_id, found = ctx.db.run(read)
    if account_id is None or found is None:
        raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid API key.")
    decision = ctx.rate_limiter.take(account_id, found.requests_per_minute)
    if decision is None:
        return Admission(account_id, {})
    if not decision.allowed:
        raise ReelgenError(
            ErrorCode.RATE_LIMITED,
            f"Rate limit exceeded: {decision.limit} requests per minute. Retry after {decision.retry_after} s.",
            headers=decision.headers,
        )
    return Admission(account_id, decision.headers)


def set_limits(ctx: Context, account_id: str, *, rpm: int | None, max_active: int | None) -> dict[str, int]:
    """Operator: override an account's limits (None keeps one); returns the effective limits,
    ``{requestsPerMinute, maxActiveTasks}`` (0 = unlimited). ``ACCOUNT_NOT_FOUND`` for an unknown account."""

    def go(conn: Connection) -> limits.Limits:
        limits.set_limits(conn, account_id, rpm=rpm, max_active=max_active)
        return limits_of(ctx, conn, account_id)

    found = ctx.db.run(go, immediate=True)
    return {"requestsPerMinute": found.requests_per_minute, "maxActiveTasks": found.max_active_tasks}


def set_schedule(ctx: Context, account_id: str, *, weight: int | None, tier: str | None) -> dict[str, object]:
    """Operator: set an account's fair-queue weight (1-1000) and tier (``high``, ``normal``,
    ``batch``); None keeps one. Returns ``{weight, tier}``. ``ACCOUNT_NOT_FOUND``, ``INVALID_INPUT``."""

    def go(conn: Connection) -> fair.Schedule:
        fair.set_schedule(conn, account_id, weight=weight, tier=tier)
        return fair.get_schedule(conn, account_id)

    found = ctx.db.run(go, immediate=True)
    return {"weight": found.weight, "tier": found.tier}
