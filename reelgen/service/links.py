"""Signed result links: an absolute, expiring URL of a task's MP4 that needs no API key.

The token is an HMAC over the task id and the expiry (keyed with the server secret), so a link
cannot be forged or extended; an expired or forged one answers like an unknown file. With
``download_url_ttl_seconds = 0`` links never expire (``expires=0``, ``expiresAt`` null, as VicSee's);
such a link stops working when the setting is changed to a lifetime, or the secret is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

from reelgen.service.context import Context

__all__ = ["signed_file_url", "valid_token"]


def _sign(ctx: Context, task_id: str, expires: int) -> str:
    mac = hmac.new(
        ctx.secret.encode(), f"file:{task_id}:{expires}".encode("utf-8", "backslashreplace"), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


def signed_file_url(ctx: Context, task_id: str, base_url: str) -> tuple[str, datetime | None]:
    """An absolute URL for a task's MP4 that needs no key (HMAC over id and expiry) and when it
    expires (None: never, with ``download_url_ttl_seconds = 0``)."""
    ttl = ctx.settings.download_url_ttl_seconds
    # Round the expiry up to a minute so repeated polls return a stable URL.
    expires = (int(time.time()) // 60 + 1) * 60 + ttl if ttl > 0 else 0
    base = (ctx.settings.public_base_url or base_url).rstrip("/")
    token = _sign(ctx, task_id, expires)
    url = f"{base}/api/v1/files/{task_id}.mp4?expires={expires}&token={token}"
    return url, datetime.fromtimestamp(expires, UTC) if expires else None


#: The most digits an ``expires`` may have (epoch seconds need 10 until the year 2286).
_EXPIRES_DIGITS = 12


def valid_token(ctx: Context, task_id: str, expires: str | None, token: str | None) -> bool:
    """Whether ``expires``/``token`` (from a signed URL's query) are a live link to this task.

    Never raises, whatever the query holds: ``expires`` must be ASCII digits (``str.isdigit`` also
    admits ``"²"``, which ``int`` refuses) and short (``int`` refuses over 4300 digits), and the
    token is compared as bytes (``hmac.compare_digest`` raises on non-ASCII text)."""
    if not expires or not token or len(expires) > _EXPIRES_DIGITS:
        return False
    if not (expires.isascii() and expires.isdigit()):
        return False
    exp = int(expires)
    given = token.encode("utf-8", "backslashreplace")
    # a link that never expires (0) is live only while the setting says so
    live = ctx.settings.download_url_ttl_seconds == 0 if exp == 0 else exp >= time.time()
    return live and hmac.compare_digest(_sign(ctx, task_id, exp).encode(), given)
