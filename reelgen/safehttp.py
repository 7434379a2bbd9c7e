"""Outbound HTTP under one safety policy: URL rules, address checks, pinned connections, and one
mapping of network errors. Used by image fetching (``inputs``) and webhook delivery (``webhooks``);
each caller passes its ``Purpose`` (what the URL is for, and the code its refusals carry), so the
messages name the right thing without being rewritten afterwards.

Only http/https on ports 80/443 (any port where the operator allows private hosts) with no
userinfo; each host is resolved once and the request is refused if *any* answer is a non-public
address (our own table: loopback, RFC 1918, link-local, CGNAT, ULA, translated forms, ...); only the
pinned, checked addresses are dialled; redirects are followed by hand (at most 3, each checked
again) or not at all; bodies are counted while streaming, never decompressed, under one overall
deadline. Every failure after validation has one message that never echoes the response, so a
closed port and an open one look the same (no blind-SSRF oracle). See docs/security.md.

Over 400 lines on purpose: the SSRF guard is one argument (what is refused, how the refusal is
pinned to the connection, how every exit maps to one message), and splitting it would scatter
the rules a security review has to read together.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpcore

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from reelgen.config import Settings

_T = TypeVar("_T")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``socket.getaddrinfo``-shaped: called as ``resolver(host, port, 0, socket.SOCK_STREAM)``.
Resolver = Callable[[str, int, int, int], Sequence[tuple[Any, ...]]]
#: Test-only hook: maps a pinned ``(ip, port)`` to the ``(host, port)`` actually dialled.
ConnectOverride = Callable[[str, int], tuple[str, int]]

MAX_URL_LENGTH = 8192

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purpose:
    """What an outbound URL is for: named in every message, and the code its errors carry."""

    #: "image", "callback": the URL is "the image URL", the rules speak of "Image URLs"
    noun: str
    code: ErrorCode
    #: The one message for every failure after validation: unreachable, closed port, HTTP error,
    #: protocol garbage, too slow, too big, compressed. It never says which.
    failed: str
    user_agent: bytes

    @property
    def refused(self) -> str:
        """Policy refusals happen before any connection is made, so they reveal nothing about ports."""
        return f"The {self.noun} URL was refused: it must point to a public internet address."

    def error(self, message: str) -> ReelgenError:
        return ReelgenError(self.code, message)


IMAGE = Purpose(
    noun="image",
    code=ErrorCode.IMAGE_FETCH_FAILED,
    failed="The image could not be fetched (unreachable, HTTP error, too slow or too large).",
    user_agent=b"reelgen-image-fetch/1",
)
CALLBACK = Purpose(
    noun="callback",
    code=ErrorCode.INVALID_INPUT,
    failed="The callback could not be delivered (unreachable, refused the connection or too slow).",
    user_agent=b"reelgen-webhooks/1",
)
#: The image purpose's messages (kept as names: tests and the fuzz targets compare against them).
FETCH_FAILED_MESSAGE = IMAGE.failed
REFUSED_MESSAGE = IMAGE.refused


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and address rules for outbound requests (input images, webhooks).

    ``allow_private`` is the operator's ``REELGEN_ALLOW_PRIVATE_IMAGE_HOSTS``: it lifts the
    loopback, RFC 1918, CGNAT, ULA and site-local rules and the port rule (any port), but never
    the rules for link-local/metadata, unspecified, multicast, reserved, documentation or
    translated (IPv4-mapped, NAT64, 6to4, Teredo) addresses.
    """

    allow_private: bool = False
    allowed_ports: frozenset[int] = frozenset({80, 443})
    connect_timeout: float = 5.0
    #: Seconds for one whole request: resolution, redirects, headers and body.
    deadline: float = 20.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 3

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.deadline <= 0 or self.max_bytes <= 0 or self.max_redirects < 0:
            raise ValueError("timeouts and max_bytes must be positive, max_redirects non-negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            allow_private=settings.allow_private_image_hosts,
            deadline=settings.image_fetch_timeout_seconds,
            max_bytes=settings.max_image_bytes,
        )

    def port_allowed(self, port: int) -> bool:
        return 0 < port < 65536 and (self.allow_private or port in self.allowed_ports)


@dataclass(frozen=True)
class _Rule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    label: str
    #: True where ``allow_private`` lifts the rule.
    private: bool = False


def _rules(*rows: tuple[str, str, bool]) -> tuple[_Rule, ...]:
    return tuple(_Rule(ipaddress.ip_network(cidr), label, private) for cidr, label, private in rows)


# Our own table (IANA special-purpose registries), not ``ip.is_global``: that property differs
# between Python versions and calls multicast, NAT64 and 6to4 addresses global.
_BLOCKED = _rules(
    ("0.0.0.0/8", "this-network 0.0.0.0/8", False),
    ("10.0.0.0/8", "private (RFC 1918)", True),
    ("100.64.0.0/10", "carrier-grade NAT 100.64/10", True),
    ("100.100.100.200/32", "cloud metadata", False),
    ("127.0.0.0/8", "loopback", True),
    ("169.254.0.0/16", "link-local 169.254/16 (cloud metadata)", False),
    ("172.16.0.0/12", "private (RFC 1918)", True),
    ("192.0.0.0/24", "IETF protocol assignments", False),
    ("192.0.2.0/24", "documentation", False),
    ("192.88.99.0/24", "6to4 relay anycast", False),
    ("192.168.0.0/16", "private (RFC 1918)", True),
    ("198.18.0.0/15", "benchmarking", False),
    ("198.51.100.0/24", "documentation", False),
    ("203.0.113.0/24", "documentation", False),
    ("224.0.0.0/4", "multicast", False),
    ("240.0.0.0/4", "reserved 240/4 and broadcast", False),
    ("::/128", "unspecified", False),
    ("::1/128", "loopback", True),
    ("::ffff:0:0/96", "IPv4-mapped", False),
    ("64:ff9b::/96", "NAT64", False),
    ("64:ff9b:1::/48", "local-use NAT64", False),
    ("100::/64", "discard-only", False),
    ("2001::/32", "Teredo", False),
    ("2001::/23", "IETF protocol assignments", False),
    ("2001:db8::/32", "documentation", False),
    ("2002::/16", "6to4", False),
    ("3fff::/20", "documentation", False),
    ("fc00::/7", "unique local (ULA)", True),
    ("fd00:ec2::254/128", "cloud metadata", False),
    ("fe80::/10", "link-local fe80::/10", False),
    ("fec0::/10", "site-local", True),
    ("ff00::/8", "multicast", False),
)
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by a mapped, NAT64, 6to4 or Teredo address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64):  # the low 32 bits
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why ``ip`` may not be fetched from, or ``None`` when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "scoped IPv6 address"
    matches = [rule for rule in _BLOCKED if ip in rule.network]
    for rule in matches:
        if not (allow_private and rule.private):
            if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
                inner_reason = blocked_reason(inner) or "public"
                return f"{rule.label} (embeds {inner}: {inner_reason})"
            return rule.label
    if matches:  # only rules that allow_private lifts
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _IPV6_GLOBAL_UNICAST:
        return "reserved IPv6 (outside 2000::/3)"
    return None


def check_address(ip: IPAddress | str, *, allow_private: bool = False, purpose: Purpose = IMAGE) -> None:
    """Raise the purpose's refusal if ``ip`` is not a public address."""
    try:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        _log.info("%s fetch refused: %r is not an IP address", purpose.noun, ip)
        raise purpose.error(purpose.refused) from None
    reason = blocked_reason(addr, allow_private=allow_private)
    if reason is not None:
        _log.info("%s fetch refused: %s is %s", purpose.noun, addr, reason)
        raise purpose.error(purpose.refused)


@dataclass(frozen=True)
class ParsedURL:
    """A validated http(s) URL, in the canonical form the fetcher sends."""

    scheme: str
    #: Lower-case ASCII (IDNA) host name, or the canonical text of an IP literal.
    host: str
    port: int
    #: Path and query, percent-encoded, starting with ``/`` (the fragment is dropped).
    target: str
    #: The address when the host is an IP literal (any IPv4 spelling normalised), else ``None``.
    ip: IPAddress | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_IPV4_PART = re.compile(r"0x(?P<hex>[0-9a-f]+)|0(?P<oct>[0-7]+)|(?P<dec>0|[1-9][0-9]*)")
# RFC 3986 reserved + unreserved + "%": everything else in the path/query is percent-encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 host with ``inet_aton`` semantics (1-4 parts, decimal/0x hex/0 octal).

    Unlike glibc's ``inet_aton`` nothing may follow the number; returns ``None`` when ``text``
    is not such a number.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    nums: list[int] = []
    for part in parts:
        m = _IPV4_PART.fullmatch(part) if len(part) <= 40 else None
        if m is None:
            return None
        if m["hex"] is not None:
            nums.append(int(m["hex"], 16))
        elif m["oct"] is not None:
            nums.append(int(m["oct"], 8))
        else:
            nums.append(int(m["dec"]))
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last
    return ipaddress.IPv4Address(value)


def _parse_host(split: urllib.parse.SplitResult, purpose: Purpose) -> tuple[str, IPAddress | None]:
    hostname = split.hostname
    if not hostname:
        raise purpose.error(f"The {purpose.noun} URL has no host.")
    if split.netloc.startswith("["):
        try:
            ip6 = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise purpose.error(f"The {purpose.noun} URL's host is not a valid IPv6 address.") from None
        return str(ip6), ip6
    try:
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise purpose.error(f"The {purpose.noun} URL's host is not a valid host name.") from None
    core = host[:-1] if host.endswith(".") else host
    if _NUMERIC_LABEL.fullmatch(core.rpartition(".")[2]):
        ip4 = parse_ipv4(core)
        if ip4 is None:
            raise purpose.error(f"The {purpose.noun} URL's host is not a valid IPv4 address.")
        return str(ip4), ip4
    if len(host) > 253 or not _HOSTNAME.fullmatch(host) or any(len(label) > 63 for label in host.split(".")):
        raise purpose.error(f"The {purpose.noun} URL's host is not a valid host name.")
    return host, None


def validate_url(url: str, policy: FetchPolicy, purpose: Purpose = IMAGE) -> ParsedURL:
    """Check a URL against the policy without touching the network.

    Only http/https, no ``user:password@``, an allowed port, a valid host; an IP literal (in any
    IPv4 spelling: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``) must pass :func:`check_address`.
    Host names are resolved and checked later, when the request is made (:func:`get`, :func:`post`).
    """
    if len(url) > MAX_URL_LENGTH:
        raise purpose.error(f"The {purpose.noun} URL is longer than {MAX_URL_LENGTH} characters.")
    if any(c <= " " or c in "\x7f\\" for c in url):
        raise purpose.error(f"The {purpose.noun} URL contains spaces, control characters or backslashes.")
    if any("\ud800" <= c <= "\udfff" for c in url):  # not text: percent-encoding it would raise
        raise purpose.error(f"The {purpose.noun} URL is not valid text.")
    try:
        split = urllib.parse.urlsplit(url)
        port = split.port
    except ValueError:
        raise purpose.error(f"The {purpose.noun} URL is not a valid URL.") from None
    if split.scheme not in _DEFAULT_PORTS:
        raise purpose.error(f"{purpose.noun.capitalize()} URLs must use http or https.")
    if "@" in split.netloc:
        raise purpose.error(f"{purpose.noun.capitalize()} URLs must not contain a user name or password.")
    host, ip = _parse_host(split, purpose)
    port = _DEFAULT_PORTS[split.scheme] if port is None else port
    if not policy.port_allowed(port):
        allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports))
        raise purpose.error(f"The {purpose.noun} URL's port is not allowed (allowed: {allowed}).")
    target = urllib.parse.quote(split.path or "/", safe=_TARGET_SAFE)
    if split.query:
        target += "?" + urllib.parse.quote(split.query, safe=_TARGET_SAFE)
    if ip is not None:
        check_address(ip, allow_private=policy.allow_private, purpose=purpose)
    return ParsedURL(scheme=split.scheme, host=host, port=port, target=target, ip=ip)


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


def _call_before(deadline: float, fn: Callable[[], _T], purpose: Purpose) -> _T:
    """Run a blocking call (DNS resolution has no timeout of its own) until ``deadline``.

    On timeout the daemon thread is abandoned; it ends when the call does.
    """
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except Exception as exc:
            box.append((False, exc))

    thread = threading.Thread(target=run, name="reelgen-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, _remaining(deadline)))
    if not box:
        _log.info("%s fetch: name resolution did not finish before the deadline", purpose.noun)
        raise purpose.error(purpose.failed)
    ok, value = box[0]
    if not ok:
        raise value
    return cast(_T, value)


def pin(url: ParsedURL, policy: FetchPolicy, purpose: Purpose, resolver: Resolver, deadline: float) -> list[IPAddress]:
    """Resolve ``url.host`` once and check every answer; the request connects only to these."""
    if url.ip is not None:
        return [url.ip]
    try:
        infos = _call_before(deadline, lambda: resolver(url.host, url.port, 0, socket.SOCK_STREAM), purpose)
    except OSError as exc:
        _log.info("%s fetch: resolving %s failed: %s", purpose.noun, url.host, exc)
        raise purpose.error(purpose.failed) from None
    addresses: list[IPAddress] = []
    for info in infos:
        text = str(info[4][0])  # a scoped answer ("fe80::1%eth0") parses, and is refused
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            _log.info("%s fetch refused: %s resolved to non-IP %r", purpose.noun, url.host, text)
            raise purpose.error(purpose.refused) from None
        check_address(addr, allow_private=policy.allow_private, purpose=purpose)
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise purpose.error(purpose.failed)
    return addresses


class _DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket operation's timeout to the fetch's overall deadline.

    Per-read timeouts alone cannot stop a server that trickles one byte at a time (headers or
    body); this can.
    """

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _clamp(self, timeout: float | None, exc: type[Exception]) -> float:
        left = _remaining(self._deadline)
        if left <= 0:
            raise exc("deadline exceeded")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, self._clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Dials only the pinned, already-checked addresses, whatever host httpcore asks for.

    TLS (SNI and certificate verification) and the Host header still use the URL's real host
    name, because httpcore takes those from the URL, not from the socket.
    """

    def __init__(
        self,
        addresses: Sequence[IPAddress],
        port: int,
        deadline: float,
        connect_timeout: float,
        connect_override: ConnectOverride | None,
    ) -> None:
        self._addresses = addresses
        self._port = port
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._override = connect_override
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError("no address")
        for ip in self._addresses:
            dial = (str(ip), self._port)
            if self._override is not None:
                dial = self._override(*dial)
            left = _remaining(self._deadline)
            if left <= 0:
                raise httpcore.ConnectTimeout("deadline exceeded")
            try:
                stream = self._inner.connect_tcp(*dial, timeout=min(self._connect_timeout, left))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


#: What a failed connection, TLS handshake, timeout or malformed response raises; each is mapped
#: to the purpose's one failure message (``_mapped``), never shown as it is.
NETWORK_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
    OSError,
)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _mapped(purpose: Purpose, host: str, exc: Exception) -> ReelgenError:
    """The one mapping of a network error: logged with its cause, answered with the purpose's message."""
    _log.info("%s fetch: %s failed: %s: %s", purpose.noun, host, type(exc).__name__, exc)
    return purpose.error(purpose.failed)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _read_body(response: httpcore.Response, policy: FetchPolicy, purpose: Purpose) -> bytes:
    declared = _header(response, b"content-length")
    if declared is not None and re.fullmatch(r"[0-9]{1,30}", declared) and int(declared) > policy.max_bytes:
        _log.info("%s fetch: Content-Length %s declares more than %d bytes", purpose.noun, declared, policy.max_bytes)
        raise purpose.error(purpose.failed)  # an early no; a small claim is never trusted
    body = io.BytesIO()
    for chunk in response.iter_stream():
        if body.tell() + len(chunk) > policy.max_bytes:
            _log.info("%s fetch: body over %d bytes", purpose.noun, policy.max_bytes)
            raise purpose.error(purpose.failed)
        body.write(chunk)
    return body.getvalue()


def _target(url: ParsedURL) -> httpcore.URL:
    return httpcore.URL(
        scheme=url.scheme.encode(), host=url.host.encode(), port=url.port, target=url.target.encode("ascii")
    )


def _timeouts(policy: FetchPolicy) -> dict[str, float]:
    return {"connect": policy.connect_timeout, "read": policy.deadline, "write": policy.deadline}


def _get_once(
    url: ParsedURL,
    backend: _PinnedBackend,
    policy: FetchPolicy,
    purpose: Purpose,
    accept: bytes,
    ssl_context: ssl.SSLContext | None,
) -> bytes | str:
    """One GET without following redirects: the body, or the ``Location`` to go to next."""
    headers = [
        (b"Host", url.host_header.encode("ascii")),
        (b"User-Agent", purpose.user_agent),
        (b"Accept", accept),
        (b"Accept-Encoding", b"identity"),
        (b"Connection", b"close"),
    ]
    with (
        httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=1, network_backend=backend) as pool,
        pool.stream("GET", _target(url), headers=headers, extensions={"timeout": _timeouts(policy)}) as response,
    ):
        location = _header(response, b"location")
        if response.status in _REDIRECTS and location:
            return location
        if response.status != 200:
            _log.info("%s fetch: %s answered HTTP %d", purpose.noun, url.host, response.status)
            raise purpose.error(purpose.failed)
        encodings = {v.strip().lower() for k, v in response.headers if k.lower() == b"content-encoding"}
        if encodings - {b"", b"identity"}:  # never decompressed: a gzip bomb is just refused
            _log.info("%s fetch: %s sent Content-Encoding %s despite identity", purpose.noun, url.host, encodings)
            raise purpose.error(purpose.failed)
        return _read_body(response, policy, purpose)


def get(
    url: str,
    policy: FetchPolicy,
    purpose: Purpose,
    *,
    accept: bytes = b"*/*",
    resolver: Resolver = socket.getaddrinfo,
    connect_override: ConnectOverride | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """GET an http(s) URL under ``policy`` and return its body, or raise the purpose's error.

    Each hop is validated, resolved once with every answer checked, and connected to the
    pinned addresses only; redirects are followed by hand (at most ``policy.max_redirects``),
    each one validated and resolved afresh. The body is counted while streaming, compressed
    responses are refused, and one deadline covers the whole request.

    ``connect_override`` is a test-only hook (leave it ``None``): it maps the pinned
    ``(ip, port)`` to the address actually dialled, so a test can serve a public-looking name
    from a local server. ``ssl_context`` defaults to httpcore's (certifi's CA bundle), built only
    for https.
    """
    deadline = time.monotonic() + policy.deadline
    current = validate_url(url, policy, purpose)
    for hop in range(policy.max_redirects + 1):
        addresses = pin(current, policy, purpose, resolver, deadline)
        backend = _PinnedBackend(addresses, current.port, deadline, policy.connect_timeout, connect_override)
        try:
            outcome = _get_once(current, backend, policy, purpose, accept, ssl_context)
        except NETWORK_ERRORS as exc:
            raise _mapped(purpose, current.host, exc) from None
        if isinstance(outcome, bytes):
            return outcome
        if hop == policy.max_redirects:
            break
        current = validate_url(urllib.parse.urljoin(str(current), outcome), policy, purpose)
    _log.info("%s fetch: more than %d redirects", purpose.noun, policy.max_redirects)
    raise purpose.error(purpose.failed)


def post(
    url: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    policy: FetchPolicy,
    purpose: Purpose,
    *,
    resolver: Resolver = socket.getaddrinfo,
) -> int:
    """POST ``body`` to ``url`` under ``policy``'s address rules and return the HTTP status.

    Redirects are never followed (a 3xx is just the status) and the response body is never read.
    A refused address or any network error raises the purpose's error.
    """
    deadline = time.monotonic() + policy.deadline
    target = validate_url(url, policy, purpose)
    addresses = pin(target, policy, purpose, resolver, deadline)
    backend = _PinnedBackend(addresses, target.port, deadline, policy.connect_timeout, None)
    all_headers = [
        (b"Host", target.host_header.encode("ascii")),
        (b"User-Agent", purpose.user_agent),
        (b"Content-Type", b"application/json"),
        (b"Connection", b"close"),
        *headers,
    ]
    try:
        with (
            httpcore.ConnectionPool(max_connections=1, network_backend=backend) as pool,
            pool.stream(
                "POST", _target(target), headers=all_headers, content=body, extensions={"timeout": _timeouts(policy)}
            ) as resp,
        ):
            return int(resp.status)
    except NETWORK_ERRORS as exc:
        raise _mapped(purpose, target.host, exc) from None
