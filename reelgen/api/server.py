"""The HTTP server: uvicorn, with a deadline for reading each request.

uvicorn closes idle keep-alive connections, but not one whose request never arrives whole: a client
that sends half a header block, or a ``Content-Length`` and then part of the body, holds its
connection (and, once the headers are in, a request task) forever, and a few hundred such clients
exhaust the server. ``read_deadline_protocol`` adds the missing rule at the protocol level, where
the bytes arrive: from a connection's first byte, and from the first byte of each later request,
the request (headers and body) must be complete within ``request_read_timeout_seconds``. When it is
not, a request that got no response yet is answered 408 (the JSON error envelope) and the
connection is closed; the app sees a disconnect. Time spent answering a complete request (a
generation's events, a long download) is not limited.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from reelgen.api.errors import envelope
from reelgen.errors import ErrorCode

__all__ = ["read_deadline_protocol", "uvicorn_config"]


def _timed_out_response(seconds: float) -> bytes:
    body = json.dumps(
        envelope(ErrorCode.REQUEST_TIMEOUT, f"The request did not arrive whole within {seconds:g} seconds.")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _ReadDeadline:
    """Mixin for uvicorn's HTTP protocols: arm a timer when a request starts arriving (or the
    connection opens), disarm it when the request is whole; on expiry, answer 408 and close."""

    read_timeout: float = 60.0
    transport: asyncio.Transport
    cycle: Any
    _read_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._read_timer is None:
            self._read_timer = asyncio.get_running_loop().call_later(self.read_timeout, self._read_expired)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_expired(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_timed_out_response(self.read_timeout))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive says so, and what it sends is dropped
            cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def _httptools_read_deadline() -> type[_ReadDeadline]:
    # imported here: httptools is in uvicorn[standard], not in every uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class _HttpToolsReadDeadline(_ReadDeadline, HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return _HttpToolsReadDeadline


class _H11ReadDeadline(_ReadDeadline, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()
        elif state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            self._arm()


def read_deadline_protocol(timeout: float, kind: str = "httptools") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (``httptools`` or ``h11``) with a ``timeout``-second deadline
    for reading each request."""
    base: type[_ReadDeadline] = _httptools_read_deadline() if kind == "httptools" else _H11ReadDeadline
    protocol: type[asyncio.Protocol] = type(base.__name__, (base,), {"read_timeout": float(timeout)})
    return protocol


def uvicorn_config(app: Any, host: str, port: int, read_timeout: float, **kwargs: Any) -> Any:
    """The ``uvicorn.Config`` that ``reelgen serve`` runs ``app`` with."""
    import uvicorn

    try:
        import httptools  # noqa: F401

        kind = "httptools"
    except ImportError:  # pragma: no cover - uvicorn without its [standard] extra
        kind = "h11"
    return uvicorn.Config(app, host=host, port=port, http=read_deadline_protocol(read_timeout, kind), **kwargs)
