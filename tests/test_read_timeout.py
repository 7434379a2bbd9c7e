"""Issue 15: incomplete requests have a read deadline. Stalled connections (nothing sent, half a
header block, part of a body) are answered 408 and closed by the real server on a real socket,
with both of uvicorn's HTTP parsers; complete requests, and answers that take long, are untouched."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from reelgen import service
from reelgen.api.app import create_app
from reelgen.api.server import read_deadline_protocol
from reelgen.store.db import Database
from tests.api_fixtures import free_port, make_ctx, make_settings
from tests.factories import generate_body, make_account

TIMEOUT = 1.0


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest, tmp_path: Path, db: Database) -> Iterator[tuple[int, service.Context]]:
    ctx = make_ctx(make_settings(tmp_path, db, request_read_timeout_seconds=TIMEOUT), db)
    port = free_port()
    app = create_app(ctx.settings, start_executor=False, ctx=ctx)
    protocol = read_deadline_protocol(TIMEOUT, request.param)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield port, ctx
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a bound far above the deadline)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_stalled_requests_are_answered_408_and_closed(server: tuple[int, service.Context]) -> None:
    port, ctx = server
    acc = make_account(ctx, credits=1000)
    body = json.dumps(generate_body()).encode()
    stalls = [
        b"",  # connects, sends nothing
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # half a header block
        b"POST /api/v1/estimate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {acc.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10],  # the headers, then part of the body
    ]
    socks = []
    for _ in range(10):  # several of each, held at once
        for stall in stalls:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(stall)
            socks.append(s)
    for s in socks:
        answer = _read_all(s)
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        _, _, payload = answer.partition(b"\r\n\r\n")
        assert json.loads(payload)["error"]["code"] == "REQUEST_TIMEOUT"
    # the server still serves, and a keep-alive connection reused after a slow answer is fine
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(2):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(30)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_request_sent_slowly_but_whole_in_time_is_served(server: tuple[int, service.Context]) -> None:
    port, _ = server
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        for i in range(0, len(request), 8):
            s.sendall(request[i : i + 8])
        assert _read_all(s).startswith(b"HTTP/1.1 200")
