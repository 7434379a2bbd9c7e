"""A property over the whole HTTP surface (issue 15): no request, whatever its method, path,
headers or body (non-ASCII, NUL, deeply nested, huge numbers, several Authorization headers ...),
gets a 5xx while the storage and the database are healthy, and the ledger holds after every run.

Requests go through the real app in process (the ASGI transport passes header bytes that a socket
client would refuse to send, so more reaches the app than over the wire), on SQLite and on
PostgreSQL. Derandomized and bounded for CI; ``REELGEN_SURFACE_EXAMPLES`` raises the bound for the
longer runs recorded in docs/hardening.md.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reelgen import service
from reelgen.api.app import create_app
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from reelgen.store import ledger
from reelgen.store.db import Database
from tests.api_fixtures import make_ctx, make_settings
from tests.factories import Account, generate_body, make_account
from tests.store_fixtures import submit

EXAMPLES = int(os.environ.get("REELGEN_SURFACE_EXAMPLES", "600"))
SURFACE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# text with what parsers trip on: NUL, controls, lone surrogates, odd whitespace, non-ASCII, escapes
_nasty = st.sampled_from(
    ["\x00", "\x1c", "\x85", "\ufeff", "\u3000", "\ud800", "é", "²", "９", "\\", "%", "%00", "%ff", "/", "..", " "]
)
text = st.lists(st.one_of(st.characters(codec=None), _nasty), max_size=20).map("".join)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=16
)
depth = st.integers(1, 3000)
nested = st.one_of(
    depth.map(lambda n: "[" * n + "]" * n),
    depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
    depth.map(
        lambda n: (
            json.dumps({"model": TEXT_TO_VIDEO, "input": {"prompt": "x", "duration": 5}})[:-1]
            + ',"x":'
            + "[" * n
            + "]" * n
            + "}"
        )
    ),
)

METHODS = st.sampled_from(["GET", "GET", "GET", "POST", "POST", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
ROUTES = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/web/app.js",
    "/api/v1/generate",
    "/api/v1/estimate",
    "/api/v1/upload",
    "/api/v1/credits",
    "/api/v1/models",
    "/api/v1/tasks",
    "/api/v1/webhooks/secret",
    "/api/v1/tasks/{id}",
    "/api/v1/tasks/{id}/download",
    "/api/v1/tasks/{id}/cancel",
    "/api/v1/tasks/{id}/events",
    "/api/v1/tasks/{id}/preview",
    "/api/v1/files/{id}.mp4",
]
#: the method each route is served with (the rest of the draws try the others)
POSTED = {"/api/v1/generate", "/api/v1/estimate", "/api/v1/upload", "/api/v1/tasks/{id}/cancel"}
segment = st.one_of(text, st.sampled_from(["0" * 32, "abc%00def", "%C3%A9", "x" * 300, "..%2f..", "%2e%2e"]))
query = st.lists(
    st.tuples(
        st.sampled_from(["mode", "expires", "token", "status", "limit", "cursor", "type"]) | text,
        text | st.sampled_from(["proxy", "url", "9999999999", "²", "9" * 5000, "-1", "101"]),
    ),
    max_size=4,
)


def _path(template: str, task_id: str) -> str:
    return template.replace("{id}", task_id)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


def _bodies(key: str) -> st.SearchStrategy[bytes | None]:
    generate_like = st.builds(
        lambda inp, model, extra: json.dumps({"model": model, "input": inp, **extra}, allow_nan=True).encode(
            "utf-8", "surrogatepass"
        ),
        st.dictionaries(
            st.sampled_from(
                ["prompt", "duration", "mode", "audio", "aspect_ratio", "image_urls", "multi_shots", "multi_prompt"]
            ),
            json_values,
            max_size=6,
        )
        | st.just(generate_body()["input"]),
        st.sampled_from([TEXT_TO_VIDEO, IMAGE_TO_VIDEO, "", "x"]) | json_values,
        st.dictionaries(st.sampled_from(["callback_url", "x"]), json_values, max_size=1),
    )
    return st.one_of(
        st.none(),
        generate_like,
        generate_like,
        st.just(json.dumps(generate_body()).encode()),
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
        nested.map(str.encode),
        generate_like,
        st.just(_png()),
        st.just(json.dumps(generate_body(IMAGE_TO_VIDEO, image_urls=["REELGEN-UPLOAD://" + "0" * 32])).encode()),
    )


header_value = st.one_of(text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=40))


def _headers(key: str) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    auth = st.one_of(
        st.just(f"Bearer {key}".encode()),
        st.just(b"Bearer sk-" + b"x" * 43),
        st.builds(lambda v: b"Bearer " + v, header_value),
        header_value,
    )
    named = st.one_of(
        st.tuples(st.just(b"authorization"), auth),
        st.tuples(
            st.just(b"content-type"),
            st.sampled_from([b"application/json", b"multipart/form-data; boundary=x", b"image/png", b"text/plain"])
            | header_value,
        ),
        st.tuples(
            st.just(b"range"),
            st.sampled_from([b"bytes=0-9", b"bytes=-5", b"bytes=5-1", b"bytes=0-1,3-4", b"bytes=99999999999999999999-"])
            | header_value,
        ),
        st.tuples(st.just(b"idempotency-key"), header_value),
        st.tuples(st.just(b"content-length"), st.sampled_from([b"0", b"-1", b"99999999999", b"abc", b"\xb2"])),
        st.tuples(st.sampled_from([b"accept", b"x-forwarded-for", b"host", b"cookie", b"origin"]), header_value),
    )
    return st.lists(named, max_size=5)


@pytest.fixture
def surface(tmp_path: Path, db: Database) -> Iterator[tuple[TestClient, service.Context, Account, str]]:
    ctx = make_ctx(make_settings(tmp_path, db, rate_limit_rpm=0, max_active_tasks=0), db)
    acc = make_account(ctx, credits=10**9, name="surface")
    task, _ = submit(db, acc.id, 10)
    with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx), raise_server_exceptions=False) as client:
        yield client, ctx, acc, task.id


def test_no_request_gets_a_5xx(surface: tuple[TestClient, service.Context, Account, str]) -> None:
    client, ctx, acc, pending_id = surface
    statuses: Counter[int] = Counter()

    @SURFACE
    @given(
        method=METHODS,
        template=st.sampled_from(ROUTES),
        task_id=st.one_of(st.just(pending_id), segment),
        raw_path=st.one_of(st.none(), st.none(), st.none(), st.none(), text),
        declared=st.integers(0, 3),
        auth=st.sampled_from(["key", "key", "key", "key", "none", "two"]),
        params=query,
        headers=_headers(acc.key),
        body=_bodies(acc.key),
    )
    def one(
        method: str,
        template: str,
        task_id: str,
        raw_path: str | None,
        declared: int,
        auth: str,
        params: list[tuple[str, str]],
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
    ) -> None:
        if declared:  # three draws in four use the route's own method, so its logic is reached
            method = "POST" if template in POSTED else "GET"
        if template.endswith("/events") and task_id == pending_id and method == "GET":
            method = "HEAD"  # a live event stream of a pending task never ends in a server without workers
        path = "/" + raw_path if raw_path is not None else _path(template, task_id)
        # percent-encoded here (any bytes, lone surrogates too), so the client sends what was drawn
        url = quote(path.encode("utf-8", "surrogatepass"), safe="/%")
        if params:
            url += "?" + urlencode(params, encoding="utf-8", errors="surrogatepass")
        sent = list(headers)
        if auth in ("key", "two"):
            sent.append((b"authorization", f"Bearer {acc.key}".encode()))
        if auth == "two":
            sent.append((b"authorization", b"Bearer sk-" + b"y" * 43))
        r = client.request(method, url, headers=sent, content=body)
        statuses[r.status_code] += 1
        assert r.status_code < 500, (method, path, params, headers, body, r.status_code, r.text[:500])
        assert "Traceback" not in r.text
        if (
            r.status_code >= 400
            and method != "HEAD"
            and r.headers.get("content-type", "").startswith("application/json")
        ):
            assert r.json()["success"] is False

    one()
    assert ctx.db.run(ledger.check) == []
    print(
        f"\nHTTP surface ({'sqlite' if ctx.db.is_sqlite else 'postgresql'}): {sum(statuses.values())} requests, "
        f"statuses {dict(sorted(statuses.items()))}, ledger check OK"
    )
