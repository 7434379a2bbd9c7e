"""``HEAD`` wherever ``GET`` is served (RFC 9110: a server that answers GET should answer HEAD).

FastAPI routes only answer the methods they declare, so a ``HEAD`` would be 405 on every GET route,
result links and ``/healthz`` included. ``HeadAsGet`` routes a ``HEAD`` as the ``GET`` of the same
URL and sends the status and headers of its answer without the body. A route whose body is costly
to produce asks ``is_head(request)`` and skips it (the MP4 streams); an endless one (``/events``)
is stopped as soon as its headers are sent, like a client that went away.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet", "is_head"]

#: The scope key marking a ``HEAD`` routed as ``GET``.
HEAD_KEY = "reelgen.head"


class _HeadAnswered(OSError):
    """Raised into the app when it sends more after the HEAD answer ended (ASGI servers raise
    ``OSError`` from ``send`` once the client is gone; streaming responses stop on it)."""


def is_head(request: Request) -> bool:
    """Whether the request is a ``HEAD`` (its route sees ``GET``)."""
    return bool(request.scope.get(HEAD_KEY))


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        scope = {**scope, "method": "GET", HEAD_KEY: True}
        ended = False

        async def head_send(message: Message) -> None:
            nonlocal ended
            if ended:
                raise _HeadAnswered("the HEAD answer is complete")
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:  # pragma: no cover - trailers and the like: passed through
                await send(message)

        try:
            await self.app(scope, receive, head_send)
        except (_HeadAnswered, ClientDisconnect):
            if not ended:
                raise
