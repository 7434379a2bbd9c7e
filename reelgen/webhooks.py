"""Webhook delivery per Standard Webhooks: sign, POST to the pinned address, retry, give up.

The outbox rows are written by ``store.tasks`` in the transaction that ends a task
(``store.webhooks.enqueue``). A ``Deliverer`` thread runs in every API process (started by the
app's lifespan): it claims due rows with a lease, POSTs each body and records the outcome.

* Headers: ``webhook-id`` (the row id, the same on every attempt), ``webhook-timestamp`` (Unix
  seconds of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``, keyed with the account's secret (``account_secret``: derived from
  the server secret, shown to the account by ``GET /api/v1/webhooks/secret`` as ``whsec_<base64>``).
* The URL passes the same rules as input images (``reelgen.safehttp``: checked at submit; at each
  attempt the host is resolved once, every address checked, and only those addresses dialled).
  Redirects are never followed: a 3xx is a failed attempt.
* 2xx = delivered. Anything else is retried after ``base x 2^(n-1)`` seconds, times a random
  factor in [0.5, 1.5) (jitter), capped at an hour, up to ``webhook_max_attempts`` attempts.
* An endpoint (account + URL) whose deliveries failed ``webhook_disable_after`` times in a row is
  disabled for ``webhook_disable_seconds``; deliveries due meanwhile fail without being sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from reelgen import safehttp
from reelgen.errors import ReelgenError
from reelgen.safehttp import CALLBACK, FetchPolicy

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.store.db import Database
    from reelgen.store.webhooks import Delivery

__all__ = ["Deliverer", "account_secret", "post", "sign"]

log = logging.getLogger(__name__)

#: How often an idle deliverer looks for due rows, and how long a claimed row is leased.
POLL_SECONDS = 0.5
LEASE_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 3600.0


def account_secret(server_secret: str, account_id: str) -> str:
    """The account's signing secret, ``whsec_`` + base64 of 32 bytes derived from the server secret."""
    key = hmac.new(server_secret.encode(), f"webhook-secret:{account_id}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``"{msg_id}.{timestamp}.{body}"`` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def validate_callback_url(url: object, policy: FetchPolicy) -> str:
    """A ``callback_url`` from a request, checked like an image URL; ``INVALID_INPUT`` otherwise."""
    from reelgen.errors import ErrorCode

    if not isinstance(url, str):
        message = "must be a string URL"
    else:
        try:
            safehttp.validate_url(url, policy, CALLBACK)
            return url
        except ReelgenError as exc:
            message = exc.message
    raise ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid input: callback_url: {message}",
        details=[{"field": "callback_url", "message": message}],
    )


def post(url: str, body: bytes, headers: list[tuple[bytes, bytes]], policy: FetchPolicy) -> int:
    """POST ``body`` to ``url`` under ``policy``'s address rules (``safehttp.post``); returns the HTTP
    status. A refused address or a network error raises ``ReelgenError``; the response body is never read."""
    return safehttp.post(url, body, headers, policy, CALLBACK)


class Deliverer:
    """Delivers due outbox rows until stopped (one per API process; rows are leased, not locked)."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        server_secret: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.server_secret = server_secret
        self.clock = clock
        self.policy = FetchPolicy(
            allow_private=settings.allow_private_image_hosts, deadline=settings.webhook_timeout_seconds
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reelgen-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except ReelgenError as exc:  # the store is unavailable: wait, then try again
                log.warning("webhook delivery pass failed: %s", exc)
                busy = 0
            except Exception:  # a bug: log it with its traceback, and keep delivering
                log.exception("webhook delivery pass failed")
                busy = 0
            if not busy:
                self._stop.wait(POLL_SECONDS)

    def run_once(self) -> int:
        """Claim the due deliveries, attempt each once; returns how many were attempted."""
        from sqlalchemy import exists, select

        from reelgen.store import webhooks
        from reelgen.store.tables import webhook_deliveries as wd

        now = self.clock()
        due = select(exists().where(wd.c.status == "pending", wd.c.next_attempt_at <= now))
        if not self.db.run(lambda conn: bool(conn.execute(due).scalar())):  # read-only when idle
            return 0
        claimed = self.db.run(lambda conn: webhooks.claim_due(conn, now, lease_seconds=LEASE_SECONDS), immediate=True)
        for delivery in claimed:
            self._attempt(delivery)
        return len(claimed)

    def _attempt(self, d: Delivery) -> None:
        from reelgen.store import webhooks

        now = self.clock()
        ok: bool
        error: str | None
        if self.db.run(lambda conn: webhooks.endpoint_disabled(conn, d.account_id, d.url, now)):
            ok, error = False, "endpoint disabled after repeated failures"
            final = True
        else:
            ok, error = self._send(d)
            final = False
        attempts = d.attempts + 1
        retry_at = None
        if not ok and not final and attempts < self.settings.webhook_max_attempts:
            delay = min(MAX_BACKOFF_SECONDS, self.settings.webhook_retry_base_seconds * 2 ** (attempts - 1))
            retry_at = self.clock() + timedelta(seconds=delay * random.uniform(0.5, 1.5))
        status = self.db.run(
            lambda conn: webhooks.record(
                conn,
                d,
                ok=ok,
                error=error,
                now=self.clock(),
                retry_at=retry_at,
                disable_after=self.settings.webhook_disable_after,
                disable_for=timedelta(seconds=self.settings.webhook_disable_seconds),
            ),
            immediate=True,
        )
        log.info("webhook %s (task %s) attempt %d: %s (%s)", d.id, d.task_id, attempts, status, error or "2xx")

    def _send(self, d: Delivery) -> tuple[bool, str | None]:
        body = d.payload.encode()
        timestamp = int(time.time())
        secret = account_secret(self.server_secret, d.account_id)
        headers = [
            (b"webhook-id", d.id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(secret, d.id, timestamp, body).encode()),
        ]
        try:
            status = post(d.url, body, headers, self.policy)
        except ReelgenError as exc:  # refused, or a network error (safehttp logs which)
            return False, exc.message
        if 200 <= status < 300:
            return True, None
        if 300 <= status < 400:
            return False, f"HTTP {status} (redirects are not followed)"
        return False, f"HTTP {status}"
