"""Input images: the SSRF guard, fetch limits, decode limits, data: URIs (RELIABILITY 13-15, 19).

Nothing here touches the internet. Public-looking names are answered by an injected resolver
(``FakeDNS``) and, where a test needs a real server behind a public address, the test-only
``connect_override`` hook (``Dialer``) routes that pinned address to a loopback port. Every other
address is dialled as-is, so a guard that let a blocked address through would really connect,
and the ``sentinel`` listener would see it.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import logging
import socket
import ssl
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pytest_httpserver import HTTPServer

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.inputs import decode_data_uri, decode_image, fetch_image_bytes, load_images
from reelgen.safehttp import (
    FETCH_FAILED_MESSAGE,
    REFUSED_MESSAGE,
    FetchPolicy,
    blocked_reason,
    check_address,
    parse_ipv4,
    validate_url,
)

HOST = "images.example.test"
PUBLIC_IP = "93.184.216.34"
PUBLIC_IP_2 = "93.184.216.35"
MB = 1024 * 1024

# ----------------------------------------------------------------------------------------------
# Test doubles for the network edge (the only things faked here) and local servers
# ----------------------------------------------------------------------------------------------


class FakeDNS:
    """An injected ``getaddrinfo``: answers from a table and records every lookup.

    A host maps to a list of answers, one per call (the last one repeats), so a rebinding
    server that answers a public address first and 127.0.0.1 afterwards is one entry.
    """

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
        answers = self.table.get(host)
        self.calls.append(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers[min(self.calls.count(host), len(answers)) - 1]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]


def no_dns(host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
    raise AssertionError(f"the resolver must not be called for an IP literal (asked for {host})")


class Dialer:
    """The test-only ``connect_override``: records each pinned (ip, port) and routes the listed
    ones to loopback ports. Anything else is dialled unchanged, for real."""

    def __init__(self, routes: dict[tuple[str, int], int]) -> None:
        self.routes = routes
        self.dialled: list[tuple[str, int]] = []

    def __call__(self, ip: str, port: int) -> tuple[str, int]:
        self.dialled.append((ip, port))
        local = self.routes.get((ip, port))
        return ("127.0.0.1", local) if local is not None else (ip, port)


class Sentinel:
    """A loopback listener that never accepts: a connection made to it waits in the kernel's
    accept queue (even after the client closes), so counting is exact and needs no thread."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1


@pytest.fixture
def sentinel() -> Iterator[Sentinel]:
    s = Sentinel()
    yield s
    s.sock.close()


Handler = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A loopback TCP (optionally TLS) server: reads each request head, then runs ``handler``."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.stop = threading.Event()
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self.threads[0].start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.heads.append(head)
            self.handler(conn, self.stop)
        except (OSError, ValueError):
            pass  # the client went away or refused the handshake: that is what some tests want
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.sock.close()


Serve = Callable[..., RawServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[RawServer] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(handler, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def respond(body: bytes, *, status: str = "200 OK", headers: Sequence[str] = ()) -> Handler:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return handler


def endless(head: bytes) -> Handler:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        block = b"\0" * 65536
        while not stop.is_set():
            conn.sendall(block)

    return handler


def endless_chunked(head: bytes) -> Handler:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        block = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
        while not stop.is_set():
            conn.sendall(block)

    return handler


def trickle(data: bytes, every: float, head: bytes = b"") -> Handler:
    """Send ``head`` at once, then ``data`` one byte every ``every`` seconds."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            if stop.wait(every):
                return

    return handler


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


def close_at_once(conn: socket.socket, stop: threading.Event) -> None:
    pass


def ssh_banner(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6 secret-internal-banner\r\n")
    stop.wait(0.2)


def closed_port() -> int:
    s = socket.create_server(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def routed(port: int, *, remote_port: int = 80) -> tuple[FakeDNS, Dialer]:
    """Resolver and dialer that serve ``images.example.test`` (a public address) from ``port``."""
    return FakeDNS({HOST: [[PUBLIC_IP]]}), Dialer({(PUBLIC_IP, remote_port): port})


def fetch_routed(port: int, path: str = "/img.png", policy: FetchPolicy | None = None) -> bytes:
    resolver, dialer = routed(port)
    return fetch_image_bytes(
        f"http://{HOST}{path}", policy or FetchPolicy(), resolver=resolver, connect_override=dialer
    )


@pytest.fixture
def why(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """The operator log of why fetches failed: the user-facing message deliberately never says,
    so the tests read the reason here to be sure each one fails for the right cause."""
    caplog.set_level(logging.INFO, logger="reelgen.safehttp")
    return lambda: caplog.text


def fetch_error(fn: Callable[[], object]) -> ReelgenError:
    with pytest.raises(ReelgenError) as info:
        fn()
    return info.value


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    return encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose IHDR claims ``width`` x ``height`` (the pixels are not there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2"]
    cards += ["NAXIS1  =                   16", "NAXIS2  =                   16", "END"]
    return "".join(c.ljust(80) for c in cards).ljust(2880).encode() + bytes(2880)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"></svg>'


# ----------------------------------------------------------------------------------------------
# RELIABILITY 13: the address table
# ----------------------------------------------------------------------------------------------

BLOCKED_ALWAYS = [
    "0.0.0.0",
    "0.1.2.3",
    "169.254.169.254",
    "169.254.0.1",
    "100.100.100.200",
    "192.0.0.8",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::808:808",
    "64:ff9b:1::1",
    "2002:7f00:1::",
    "2002:808:808::1",
    "2001::1",
    "2001:db8::1",
    "3fff::1",
    "100::1",
    "fe80::1",
    "fd00:ec2::254",
    "ff02::1",
    "fe80::1%eth0",
]
BLOCKED_UNLESS_PRIVATE = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.255.255",
    "100.64.0.1",
    "100.127.255.255",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111"]


@pytest.mark.parametrize("addr", BLOCKED_ALWAYS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_always_blocked_addresses(addr: str, allow_private: bool) -> None:
    err = fetch_error(lambda: check_address(addr, allow_private=allow_private))
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, REFUSED_MESSAGE)


@pytest.mark.parametrize("addr", BLOCKED_UNLESS_PRIVATE)
def test_private_addresses_blocked_unless_the_operator_allows_them(addr: str) -> None:
    with pytest.raises(ReelgenError):
        check_address(addr)
    check_address(addr, allow_private=True)


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr: str) -> None:
    check_address(addr)


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("::ffff:127.0.0.1", "IPv4-mapped (embeds 127.0.0.1: loopback)"),
        ("64:ff9b::a9fe:a9fe", "NAT64 (embeds 169.254.169.254: link-local 169.254/16 (cloud metadata))"),
        ("2002:7f00:1::", "6to4 (embeds 127.0.0.1: loopback)"),
        ("::ffff:8.8.8.8", "IPv4-mapped (embeds 8.8.8.8: public)"),
    ],
)
def test_translated_addresses_name_the_embedded_ipv4(addr: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(addr)) == reason


@settings(max_examples=400, deadline=None)
@given(st.ip_addresses())
def test_our_table_is_never_looser_than_is_global(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if blocked_reason(addr) is None:
        assert addr.is_global, addr


# ----------------------------------------------------------------------------------------------
# RELIABILITY 13: URL validation
# ----------------------------------------------------------------------------------------------

BLOCKED_URLS = [
    "http://127.0.0.1/",
    "https://127.0.0.1/",
    "http://127.1/",
    "http://127.0.0.1./",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0X7F.0.0.1/",
    "http://0177.0.0.1/",
    "http://0177.0.0.01/",
    "http://017700000001/",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # full-width digits: IDNA maps them to 127.0.0.1
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://3232235777/",  # 192.168.1.1
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/",  # 169.254.169.254
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
]


@pytest.mark.parametrize("url", BLOCKED_URLS)
def test_blocked_ip_literals_are_refused_before_any_connection(url: str) -> None:
    err = fetch_error(lambda: validate_url(url, FetchPolicy()))
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, REFUSED_MESSAGE)
    dialer = Dialer({})
    err = fetch_error(lambda: fetch_image_bytes(url, FetchPolicy(), resolver=no_dns, connect_override=dialer))
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, REFUSED_MESSAGE)
    assert dialer.dialled == []


BAD_URLS = [
    "ftp://images.example.test/a.png",
    "file:///etc/passwd",
    "gopher://images.example.test:70/",
    "javascript:alert(1)",
    "images.example.test/a.png",
    "//images.example.test/a.png",
    "http://user:pass@images.example.test/a.png",
    "http://user@images.example.test/a.png",
    "http://@images.example.test/a.png",
    "http://images.example.test\\@127.0.0.1/",
    "http://images.example.test:8080/a.png",
    "http://images.example.test:22/",
    "http://images.example.test:0/",
    "http://images.example.test:99999/",
    "http://images.example.test:x/",
    "http:///a.png",
    "http://",
    "http://[::1/",
    "http://[127.0.0.1]/",
    "http://images.example.test/a b.png",
    "http://images.exa\tmple.test/",
    "http://images.example.test/\r\nX-Injected: 1",
    " http://images.example.test/",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://1.2.65536/",
    "http://0x100000000/",
    "http://08.0.0.1/",
    "http://0x/",
    "http://127.0.0.%31/",
    "http://exa_mple..test/",
    "http://" + "a" * 64 + ".test/",
    "http://images.example.test/" + "a" * 9000,
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_or_disallowed_urls_are_refused(url: str) -> None:
    err = fetch_error(lambda: validate_url(url, FetchPolicy()))
    assert err.code == ErrorCode.IMAGE_FETCH_FAILED
    assert err.message != FETCH_FAILED_MESSAGE  # a policy refusal, decided before any connection


@pytest.mark.parametrize(
    ("url", "canonical", "ip"),
    [
        ("http://images.example.test/cat.png?x=1#frag", "http://images.example.test/cat.png?x=1", None),
        ("HTTPS://Images.Example.Test", "https://images.example.test/", None),
        ("http://b\u00fccher.example/\u00e4?q=\u00fc", "http://xn--bcher-kva.example/%C3%A4?q=%C3%BC", None),
        ("http://images.example.test/a%20b.png", "http://images.example.test/a%20b.png", None),
        ("https://images.example.test:443/a", "https://images.example.test/a", None),
        ("http://93.184.216.34/x", "http://93.184.216.34/x", "93.184.216.34"),
        ("http://1572395042/x", "http://93.184.216.34/x", "93.184.216.34"),
        ("https://[2606:4700:4700::1111]/x", "https://[2606:4700:4700::1111]/x", "2606:4700:4700::1111"),
    ],
)
def test_valid_urls_are_normalised(url: str, canonical: str, ip: str | None) -> None:
    parsed = validate_url(url, FetchPolicy())
    assert str(parsed) == canonical
    assert parsed.ip == (ipaddress.ip_address(ip) if ip else None)


def test_ports_any_only_when_private_hosts_are_allowed() -> None:
    with pytest.raises(ReelgenError):
        validate_url("http://images.example.test:8080/", FetchPolicy())
    assert validate_url("http://images.example.test:8080/", FetchPolicy(allow_private=True)).port == 8080
    custom = FetchPolicy(allowed_ports=frozenset({443, 8443}))
    assert validate_url("https://images.example.test:8443/", custom).port == 8443
    with pytest.raises(ReelgenError):
        validate_url("http://images.example.test/", custom)


def test_policy_from_settings() -> None:
    from reelgen.config import Settings

    policy = FetchPolicy.from_settings(
        Settings(allow_private_image_hosts=True, image_fetch_timeout_seconds=7.5, max_image_bytes=1234)
    )
    assert (policy.allow_private, policy.deadline, policy.max_bytes) == (True, 7.5, 1234)
    assert FetchPolicy.from_settings(Settings()) == FetchPolicy()


octet_spelling = st.integers(0, 255).flatmap(
    lambda n: st.sampled_from([str(n), hex(n), "0" + oct(n)[2:]]).map(lambda s: (n, s))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(octet_spelling, min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_numeric_hosts_parse_exactly_like_inet_aton(parts: list[tuple[int, str]], tail: int) -> None:
    # the last part fills the remaining bytes (inet_aton semantics): 127.1 is 127.0.0.1
    head = [s for _, s in parts[:-1]]
    last = tail % (256 ** (5 - len(parts)))
    host = ".".join([*head, str(last)])
    expected = ipaddress.IPv4Address(socket.inet_aton(host))
    assert parse_ipv4(host) == expected
    try:
        parsed = validate_url(f"http://{host}/", FetchPolicy(allow_private=True))
    except ReelgenError as exc:
        assert exc.message == REFUSED_MESSAGE
        assert blocked_reason(expected, allow_private=True) is not None
    else:
        assert parsed.ip == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789abcdefx.", max_size=24))
def test_numeric_hosts_never_disagree_with_inet_aton(host: str) -> None:
    ours = parse_ipv4(host)
    try:
        theirs = ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        theirs = None
    assert ours is None or ours == theirs  # we may refuse more, never read a different address


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.builds(lambda s: "http://" + s, st.text(max_size=60)))
def test_validate_url_only_ever_raises_reelgen_errors(url: str) -> None:
    try:
        parsed = validate_url(url, FetchPolicy())
    except ReelgenError as exc:
        assert exc.code == ErrorCode.IMAGE_FETCH_FAILED
    else:
        assert parsed.scheme in ("http", "https")
        assert parsed.port in (80, 443)
        assert parsed.target.startswith("/")
        assert parsed.target.isascii()


# ----------------------------------------------------------------------------------------------
# RELIABILITY 13: resolution, pinning, redirects; nothing reaches a blocked address
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answers",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["100.64.0.1"],
        ["0.0.0.0"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["fe80::1%eth0"],
        ["fc00::1"],
        ["64:ff9b::7f00:1"],
        ["2002:7f00:1::"],
        [PUBLIC_IP, "127.0.0.1"],  # one bad answer is enough
        ["2606:4700:4700::1111", "fd00:ec2::254"],
        ["not-an-address"],
    ],
)
def test_names_resolving_to_any_blocked_address_are_refused(answers: list[str], sentinel: Sentinel) -> None:
    resolver, dialer = FakeDNS({HOST: [answers]}), Dialer({})
    policy = FetchPolicy(allowed_ports=frozenset({80, 443, sentinel.port}))
    err = fetch_error(
        lambda: fetch_image_bytes(
            f"http://{HOST}:{sentinel.port}/a.png", policy, resolver=resolver, connect_override=dialer
        )
    )
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, REFUSED_MESSAGE)
    assert resolver.calls == [HOST]
    assert dialer.dialled == []
    assert sentinel.connections() == 0


def test_sentinel_sees_a_real_connection(sentinel: Sentinel, why: Callable[[], str]) -> None:
    """Positive control: the sentinel does count a connection when nothing blocks it."""
    policy = FetchPolicy(allow_private=True, deadline=0.5)
    err = fetch_error(lambda: fetch_image_bytes(f"http://127.0.0.1:{sentinel.port}/", policy))
    assert err.message == FETCH_FAILED_MESSAGE
    assert sentinel.connections() == 1
    assert "ReadTimeout" in why()


def test_rebinding_resolver_is_asked_once_and_the_pinned_address_is_dialled(serve: Serve) -> None:
    server = serve(respond(png()))
    resolver = FakeDNS({HOST: [[PUBLIC_IP], ["127.0.0.1"]]})  # public first, loopback afterwards
    dialer = Dialer({(PUBLIC_IP, 80): server.port})
    data = fetch_image_bytes(f"http://{HOST}/a.png", FetchPolicy(), resolver=resolver, connect_override=dialer)
    assert data == png()
    assert resolver.calls == [HOST]
    assert dialer.dialled == [(PUBLIC_IP, 80)]
    assert f"Host: {HOST}\r\n".encode() in server.heads[0]


def test_pinning_holds_without_the_test_hook(httpserver: HTTPServer) -> None:
    """No connect_override: the first answer (loopback, allowed here) is served by the local
    server; the later answer is unroutable and refused, so success proves the pin was used."""
    httpserver.expect_request("/a.png").respond_with_data(png(), content_type="image/png")
    resolver = FakeDNS({HOST: [["127.0.0.1"], ["192.0.2.1"]]})
    url = f"http://{HOST}:{httpserver.port}/a.png"
    assert fetch_image_bytes(url, FetchPolicy(allow_private=True), resolver=resolver) == png()
    assert resolver.calls == [HOST]


def test_falls_back_to_the_next_pinned_address_when_one_refuses(serve: Serve) -> None:
    server = serve(respond(png()))
    resolver = FakeDNS({HOST: [[PUBLIC_IP, PUBLIC_IP_2]]})
    dialer = Dialer({(PUBLIC_IP, 80): closed_port(), (PUBLIC_IP_2, 80): server.port})
    assert fetch_image_bytes(f"http://{HOST}/", FetchPolicy(), resolver=resolver, connect_override=dialer) == png()
    assert dialer.dialled == [(PUBLIC_IP, 80), (PUBLIC_IP_2, 80)]


def redirect_targets(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",
        f"http://0x7f.1:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://internal.example.test:{port}/",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.example.test/computeMetadata/v1/",
        "file:///etc/passwd",
        "ftp://images.example.test/",
        "http://user:pw@images.example.test/",
    ]


@pytest.mark.parametrize("index", range(len(redirect_targets(0))))
def test_redirects_to_blocked_targets_are_refused_without_connecting(
    index: int, httpserver: HTTPServer, sentinel: Sentinel
) -> None:
    location = redirect_targets(sentinel.port)[index]
    httpserver.expect_request("/start").respond_with_data("", status=302, headers={"Location": location})
    resolver = FakeDNS(
        {
            HOST: [[PUBLIC_IP]],
            "localhost": [["127.0.0.1"]],
            "internal.example.test": [["127.0.0.1"]],
            "metadata.example.test": [["169.254.169.254"]],
        }
    )
    dialer = Dialer({(PUBLIC_IP, 80): httpserver.port})
    policy = FetchPolicy(allowed_ports=frozenset({80, 443, sentinel.port}))  # only the address rule blocks
    err = fetch_error(
        lambda: fetch_image_bytes(f"http://{HOST}/start", policy, resolver=resolver, connect_override=dialer)
    )
    assert err.code == ErrorCode.IMAGE_FETCH_FAILED
    assert err.message != FETCH_FAILED_MESSAGE  # refused by policy, not a failed connection
    assert dialer.dialled == [(PUBLIC_IP, 80)]
    assert sentinel.connections() == 0


def test_redirects_are_followed_by_hand_and_each_hop_is_resolved(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/r1").respond_with_data("", status=301, headers={"Location": "/r2"})
    httpserver.expect_request("/r2").respond_with_data(
        "", status=307, headers={"Location": "http://cdn.example.test/r3"}
    )
    httpserver.expect_request("/r3").respond_with_data("", status=303, headers={"Location": "/img.png"})
    httpserver.expect_request("/img.png").respond_with_data(png(), content_type="image/png")
    resolver = FakeDNS({HOST: [[PUBLIC_IP]], "cdn.example.test": [[PUBLIC_IP_2]]})
    dialer = Dialer({(PUBLIC_IP, 80): httpserver.port, (PUBLIC_IP_2, 80): httpserver.port})
    data = fetch_image_bytes(f"http://{HOST}/r1", FetchPolicy(), resolver=resolver, connect_override=dialer)
    assert data == png()
    assert resolver.calls == [HOST, HOST, "cdn.example.test", "cdn.example.test"]
    assert dialer.dialled == [(PUBLIC_IP, 80), (PUBLIC_IP, 80), (PUBLIC_IP_2, 80), (PUBLIC_IP_2, 80)]
    hosts = [r.headers["Host"] for r, _ in httpserver.log]
    assert hosts == [HOST, HOST, "cdn.example.test", "cdn.example.test"]


def test_more_than_three_redirects_fail(httpserver: HTTPServer, why: Callable[[], str]) -> None:
    for i in range(4):
        httpserver.expect_request(f"/r{i}").respond_with_data("", status=302, headers={"Location": f"/r{i + 1}"})
    httpserver.expect_request("/r4").respond_with_data(png(), content_type="image/png")
    err = fetch_error(lambda: fetch_routed(httpserver.port, "/r0"))
    assert err.message == FETCH_FAILED_MESSAGE
    assert len(httpserver.log) == 4  # the 4th redirect is never followed
    assert "more than 3 redirects" in why()
    assert fetch_routed(httpserver.port, "/r1") == png()  # 3 redirects are fine


# ----------------------------------------------------------------------------------------------
# RELIABILITY 19: no oracle, no echo
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: respond(b"<h1>secret-internal-body</h1>", status="404 Not Found"),
        lambda: respond(b"secret-internal-body", status="500 Internal Server Error"),
        lambda: respond(b"", status="204 No Content"),
        lambda: respond(b"", status="302 Found"),  # a redirect without Location
        lambda: ssh_banner,
        lambda: close_at_once,
        lambda: silent,
    ],
)
def test_open_and_closed_ports_fail_identically(make: Callable[[], Handler], serve: Serve) -> None:
    server = serve(make())
    policy = FetchPolicy(allow_private=True, deadline=1.0)
    outcomes = []
    for port in (closed_port(), server.port):
        # through a public name routed to loopback, and straight at a loopback literal
        outcomes.append(fetch_error(partial(fetch_routed, port, policy=FetchPolicy(deadline=1.0))))
        outcomes.append(fetch_error(partial(fetch_image_bytes, f"http://127.0.0.1:{port}/", policy)))
    assert {(e.code, e.message) for e in outcomes} == {(ErrorCode.IMAGE_FETCH_FAILED, FETCH_FAILED_MESSAGE)}
    assert len(server.heads) == 2  # the open port really was reached, both ways
    for e in outcomes:
        assert "secret" not in str(e) and "SSH" not in str(e) and str(server.port) not in str(e)


def test_open_and_closed_loopback_ports_look_the_same_under_the_default_policy(serve: Serve) -> None:
    server = serve(respond(png()))
    errors = [
        fetch_error(partial(fetch_image_bytes, f"http://127.0.0.1:{port}/", FetchPolicy()))
        for port in (closed_port(), server.port)
    ]
    assert errors[0].code == errors[1].code == ErrorCode.IMAGE_FETCH_FAILED
    assert errors[0].message == errors[1].message
    assert server.heads == []


# ----------------------------------------------------------------------------------------------
# TLS: the connection is pinned, but SNI and certificate checks use the real host name
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> Any:
    import trustme

    return trustme.CA()


def tls_server(serve: Serve, ca: Any, cert_host: str, sni_seen: list[str]) -> RawServer:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_host).configure_cert(ctx)
    ctx.sni_callback = lambda sock, name, _ctx: sni_seen.append(name or "")
    return serve(respond(png()), tls=ctx)


def test_https_is_pinned_with_sni_and_certificate_on_the_real_host(serve: Serve, tls_ca: Any) -> None:
    sni: list[str] = []
    server = tls_server(serve, tls_ca, HOST, sni)
    client_ctx = ssl.create_default_context()
    tls_ca.configure_trust(client_ctx)
    resolver, dialer = FakeDNS({HOST: [[PUBLIC_IP]]}), Dialer({(PUBLIC_IP, 443): server.port})
    data = fetch_image_bytes(
        f"https://{HOST}/a.png", FetchPolicy(), resolver=resolver, connect_override=dialer, ssl_context=client_ctx
    )
    assert data == png()
    assert sni == [HOST]
    assert dialer.dialled == [(PUBLIC_IP, 443)]
    assert f"Host: {HOST}\r\n".encode() in server.heads[0]


def test_https_certificate_for_another_host_is_rejected(serve: Serve, tls_ca: Any, why: Callable[[], str]) -> None:
    server = tls_server(serve, tls_ca, "other.example.test", [])
    client_ctx = ssl.create_default_context()
    tls_ca.configure_trust(client_ctx)
    resolver, dialer = FakeDNS({HOST: [[PUBLIC_IP]]}), Dialer({(PUBLIC_IP, 443): server.port})
    err = fetch_error(
        lambda: fetch_image_bytes(
            f"https://{HOST}/a.png", FetchPolicy(), resolver=resolver, connect_override=dialer, ssl_context=client_ctx
        )
    )
    assert err.message == FETCH_FAILED_MESSAGE
    assert server.heads == []
    assert "Hostname mismatch" in why()


def test_https_verifies_certificates_by_default(serve: Serve, tls_ca: Any, why: Callable[[], str]) -> None:
    server = tls_server(serve, tls_ca, HOST, [])  # right host name, but a CA nobody trusts
    resolver, dialer = FakeDNS({HOST: [[PUBLIC_IP]]}), Dialer({(PUBLIC_IP, 443): server.port})
    err = fetch_error(
        lambda: fetch_image_bytes(f"https://{HOST}/a.png", FetchPolicy(), resolver=resolver, connect_override=dialer)
    )
    assert err.message == FETCH_FAILED_MESSAGE
    assert "CERTIFICATE_VERIFY_FAILED" in why()


# ----------------------------------------------------------------------------------------------
# RELIABILITY 14: fetch limits
# ----------------------------------------------------------------------------------------------


def measured(fn: Callable[[], object]) -> tuple[ReelgenError | object, float, int]:
    """Run ``fn``; return (its result or ReelgenError, seconds, peak traced memory growth)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.monotonic()
    try:
        result: ReelgenError | object = fn()
    except ReelgenError as exc:
        result = exc
    elapsed = time.monotonic() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return result, elapsed, peak


def test_endless_stream_is_cut_at_max_bytes(serve: Serve, why: Callable[[], str]) -> None:
    server = serve(endless(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n"))  # close-delimited
    result, elapsed, peak = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=10)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert elapsed < 10 + 1
    assert peak < 50 * MB
    assert "body over 20971520 bytes" in why()


def test_lying_content_length_is_not_trusted(serve: Serve, why: Callable[[], str]) -> None:
    # claims 1000 bytes, but chunked framing wins and the chunks never end
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = serve(endless_chunked(head))
    result, elapsed, peak = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=10)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert elapsed < 10 + 1
    assert peak < 50 * MB
    assert "body over 20971520 bytes" in why()


def test_body_beyond_content_length_is_never_read(serve: Serve) -> None:
    server = serve(endless(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"))
    result, elapsed, peak = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=10)))
    assert result == b"\0" * 100
    assert elapsed < 10 + 1
    assert peak < 50 * MB


def test_declared_oversize_is_refused_without_reading(serve: Serve, why: Callable[[], str]) -> None:
    server = serve(endless(b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\n"))
    result, _, peak = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=10)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert peak < 5 * MB
    assert "Content-Length 10737418240 declares more than" in why()


def test_max_bytes_is_exact(serve: Serve, why: Callable[[], str]) -> None:
    body = png()
    server = serve(respond(body))
    assert fetch_routed(server.port, policy=FetchPolicy(max_bytes=len(body))) == body
    err = fetch_error(lambda: fetch_routed(server.port, policy=FetchPolicy(max_bytes=len(body) - 1)))
    assert err.message == FETCH_FAILED_MESSAGE
    assert "declares more than" in why()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """64 MB of zeros, gzip-compressed to about 64 KB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    return b"".join(z.compress(block) for _ in range(64)) + z.flush()


def test_gzip_bomb_is_refused_not_decompressed(serve: Serve, gzip_bomb: bytes, why: Callable[[], str]) -> None:
    server = serve(respond(gzip_bomb, headers=["Content-Encoding: gzip", "Content-Type: image/png"]))
    result, elapsed, peak = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=10)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert elapsed < 10 + 1
    assert peak < 50 * MB
    assert b"Accept-Encoding: identity\r\n" in server.heads[0]
    assert "sent Content-Encoding {b'gzip'}" in why()


def test_compressed_valid_image_is_refused(serve: Serve, why: Callable[[], str]) -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    server = serve(respond(z.compress(png()) + z.flush(), headers=["Content-Encoding: gzip"]))
    assert fetch_error(lambda: fetch_routed(server.port)).message == FETCH_FAILED_MESSAGE
    assert "Content-Encoding" in why()
    plain = serve(respond(png(), headers=["Content-Encoding: identity"]))
    assert fetch_routed(plain.port) == png()


def test_body_trickle_is_cut_at_the_deadline(serve: Serve, why: Callable[[], str]) -> None:
    server = serve(trickle(bytes(1000), every=1.0, head=b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"))
    result, elapsed, _ = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=2.0)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert 1.9 <= elapsed < 2.0 + 1
    assert "ReadTimeout" in why()


def test_header_trickle_is_cut_at_the_deadline(serve: Serve, why: Callable[[], str]) -> None:
    server = serve(trickle(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 1000, every=0.25))
    result, elapsed, _ = measured(lambda: fetch_routed(server.port, policy=FetchPolicy(deadline=2.0)))
    assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
    assert 1.9 <= elapsed < 2.0 + 1
    assert "ReadTimeout" in why()


def test_connect_timeout(why: Callable[[], str]) -> None:
    """A listener whose accept queue is full drops SYNs, so connecting hangs until the timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        policy = FetchPolicy(connect_timeout=0.5, deadline=5.0)
        result, elapsed, _ = measured(lambda: fetch_routed(port, policy=policy))
        assert isinstance(result, ReelgenError) and result.message == FETCH_FAILED_MESSAGE
        assert 0.4 <= elapsed < 0.5 + 1
        assert "ConnectTimeout" in why()
    finally:
        filler.close()
        listener.close()


def test_slow_resolver_counts_against_the_deadline(why: Callable[[], str]) -> None:
    release = threading.Event()

    def slow(host: str, port: int, family: int = 0, type: int = 0) -> list[tuple[Any, ...]]:
        release.wait(10)
        return []

    start = time.monotonic()
    err = fetch_error(lambda: fetch_image_bytes(f"http://{HOST}/", FetchPolicy(deadline=0.5), resolver=slow))
    release.set()
    assert err.message == FETCH_FAILED_MESSAGE
    assert time.monotonic() - start < 0.5 + 1
    assert "name resolution did not finish" in why()


def test_unknown_host_is_a_plain_fetch_failure() -> None:
    err = fetch_error(
        lambda: fetch_image_bytes(
            "http://nowhere.example.test/", FetchPolicy(), resolver=FakeDNS({HOST: [[PUBLIC_IP]]})
        )
    )
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, FETCH_FAILED_MESSAGE)


# ----------------------------------------------------------------------------------------------
# RELIABILITY 15: decode limits
# ----------------------------------------------------------------------------------------------


def test_huge_png_header_is_rejected_fast() -> None:
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 100
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        err = fetch_error(lambda: decode_image(bomb))
        timings.append(time.perf_counter() - start)
        assert err.code == ErrorCode.IMAGE_TOO_LARGE
    assert min(timings) < 0.1  # best of 5: immune to a one-off scheduler hiccup


def test_decoding_leaves_pils_process_wide_pixel_guard_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Image.MAX_IMAGE_PIXELS`` belongs to the whole process: decoding must not rewrite it."""
    before = 123_456_789
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", before)
    assert decode_image(encode(Image.new("RGB", (64, 48)), "PNG")).size == (64, 48)
    assert fetch_error(lambda: decode_image(png_header_only(7000, 7000))).code == ErrorCode.IMAGE_TOO_LARGE
    assert Image.MAX_IMAGE_PIXELS - before == 0


@pytest.mark.parametrize(("w", "h"), [(6100, 6000), (7000, 7000), (65_535, 65_535)])
def test_pixel_limit_is_checked_from_the_header(w: int, h: int) -> None:
    assert fetch_error(lambda: decode_image(png_header_only(w, h))).code == ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    ("name", "make", "pil_can_read_it"),
    [
        ("svg", lambda: SVG, False),
        ("fits", fits, True),
        ("tiff", lambda: encode(Image.new("RGB", (64, 48)), "TIFF"), True),
        ("gif", lambda: encode(Image.new("RGB", (64, 48)), "GIF"), True),
        ("bmp", lambda: encode(Image.new("RGB", (64, 48)), "BMP"), True),
        ("html", lambda: b"<html><body>not an image</body></html>", False),
        ("empty", lambda: b"", False),
    ],
)
def test_only_jpeg_png_webp_are_decoded(name: str, make: Callable[[], bytes], pil_can_read_it: bool) -> None:
    data = make()
    if pil_can_read_it:  # the refusal is ours, not PIL's inability
        Image.open(io.BytesIO(data)).load()
    err = fetch_error(lambda: decode_image(data))
    assert err.code == ErrorCode.INVALID_IMAGE, name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images_are_rejected(fmt: str) -> None:
    noisy = Image.effect_noise((64, 48), 64).convert("RGB")
    data = encode(noisy, fmt)
    assert decode_image(data).size == (64, 48)
    assert fetch_error(lambda: decode_image(data[: len(data) // 2])).code == ErrorCode.INVALID_IMAGE


@pytest.mark.parametrize(
    ("w", "h", "ok"),
    [(250, 100, True), (100, 250, True), (251, 100, False), (100, 251, False), (300, 100, False), (1, 1000, False)],
)
def test_side_ratio_limits(w: int, h: int, ok: bool) -> None:
    data = png(w, h)
    if ok:
        assert decode_image(data).size == (w, h)
    else:
        assert fetch_error(lambda: decode_image(data)).code == ErrorCode.INVALID_IMAGE


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: the left edge ends on top
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


# ----------------------------------------------------------------------------------------------
# data: URIs and load_images
# ----------------------------------------------------------------------------------------------


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "IMAGE/WEBP")])
def test_data_uris_decode(fmt: str, media: str) -> None:
    data = encode(Image.new("RGB", (64, 48)), fmt)
    assert decode_data_uri(data_uri(data, media), 1 * MB) == data
    wrapped = data_uri(data, media).replace("base64,", "base64,\n", 1)
    assert decode_data_uri(wrapped, 1 * MB) == data


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,not base64!",
        "data:image/png;base64,iVBORw0KGgo",  # bad padding
        "data:image/png;base64,\u00e9\u00e9\u00e9\u00e9",
        "data:image/svg+xml;base64," + base64.b64encode(SVG).decode(),
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:,",
    ],
)
def test_bad_data_uris_are_invalid_images(uri: str) -> None:
    assert fetch_error(lambda: decode_data_uri(uri, 1 * MB)).code == ErrorCode.INVALID_IMAGE


def test_data_uri_size_is_checked_before_decoding() -> None:
    limit = 1000
    ok = data_uri(bytes(limit))
    assert decode_data_uri(ok, limit) == bytes(limit)
    assert fetch_error(lambda: decode_data_uri(data_uri(bytes(limit + 1)), limit)).code == ErrorCode.IMAGE_FETCH_FAILED
    # 40 MB of characters that are not even base64: refused on length alone, quickly
    huge = "data:image/png;base64," + "!" * (40 * MB)
    start = time.monotonic()
    err = fetch_error(lambda: decode_data_uri(huge, 20 * MB))
    assert err.code == ErrorCode.IMAGE_FETCH_FAILED
    assert time.monotonic() - start < 1.0


def test_load_images_takes_at_most_two() -> None:
    uri = data_uri(png())
    assert fetch_error(lambda: load_images([uri, uri, uri], FetchPolicy())).code == ErrorCode.INVALID_INPUT
    images = load_images([uri, data_uri(png(48, 64))], FetchPolicy())
    assert [i.size for i in images] == [(64, 48), (48, 64)]
    assert all(i.mode == "RGB" for i in images)
    assert load_images([], FetchPolicy()) == []


def test_load_images_fetches_decodes_and_names_the_failing_entry(serve: Serve) -> None:
    good = serve(respond(png()))
    bomb = serve(respond(png_header_only(50_000, 50_000)))
    resolver = FakeDNS({HOST: [[PUBLIC_IP]], "bomb.example.test": [[PUBLIC_IP_2]]})
    dialer = Dialer({(PUBLIC_IP, 80): good.port, (PUBLIC_IP_2, 80): bomb.port})
    kw: dict[str, Any] = {"resolver": resolver, "connect_override": dialer}
    [img] = load_images([f"http://{HOST}/a.png"], FetchPolicy(), **kw)
    assert img.size == (64, 48)
    err = fetch_error(lambda: load_images([data_uri(png()), "http://bomb.example.test/b.png"], FetchPolicy(), **kw))
    assert err.code == ErrorCode.IMAGE_TOO_LARGE
    assert err.message.startswith("image_urls[1]: ")
    err = fetch_error(lambda: load_images(["http://127.0.0.1/x.png"], FetchPolicy(), **kw))
    assert (err.code, err.message) == (ErrorCode.IMAGE_FETCH_FAILED, f"image_urls[0]: {REFUSED_MESSAGE}")
