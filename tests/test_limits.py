"""Request limits and error hygiene (RELIABILITY 18, 19): body size, prompt length, no leaks in
errors, and the regressions the contract fuzzing run found (``tests/test_contract.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.app import create_app
from reelgen.schemas import MAX_PROMPT_CHARS, TEXT_TO_VIDEO
from reelgen.store import ledger
from reelgen.store.db import Database
from reelgen.store.tables import movements, tasks
from tests.api_fixtures import make_ctx, make_settings
from tests.factories import generate_body, make_account
from tests.leaks import leaks
from tests.store_fixtures import T0, submit

LIMIT = 64 * 1024
ONE_MB = 1024 * 1024


@pytest.fixture
def small_ctx(tmp_path: Path, db: Database) -> service.Context:
    return make_ctx(make_settings(tmp_path, db, max_body_bytes=LIMIT), db)


@pytest.fixture
def small(small_ctx: service.Context) -> Iterator[TestClient]:
    with TestClient(create_app(small_ctx.settings, start_executor=False, ctx=small_ctx)) as c:
        yield c


def _rows(ctx: service.Context) -> tuple[int, int]:
    def count(conn: Any) -> tuple[int, int]:
        n_tasks = conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one()
        n_movements = conn.execute(sa.select(sa.func.count()).select_from(movements)).scalar_one()
        return int(n_tasks), int(n_movements)

    result: tuple[int, int] = ctx.db.run(count)
    return result


def _assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == code, r.text
    assert leaks(r.text, sent="", error=True) == []
    return dict(body["error"])


def _one_mb_body() -> bytes:
    return b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "' + b"x" * ONE_MB + b'"}}'


def test_a_1mb_body_over_the_limit_is_413_and_writes_no_row(small: TestClient, small_ctx: service.Context) -> None:
    account = make_account(small_ctx, credits=10_000)
    before = _rows(small_ctx)  # the grant: one movement
    headers = {**account.headers, "Content-Type": "application/json"}
    error = _assert_error(
        small.post("/api/v1/generate", content=_one_mb_body(), headers=headers), 413, "PAYLOAD_TOO_LARGE"
    )
    assert error["message"] == f"The request body is larger than {LIMIT} bytes."

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming, cut at the limit
        body = _one_mb_body()
        for i in range(0, len(body), 16 * 1024):
            yield body[i : i + 16 * 1024]

    _assert_error(small.post("/api/v1/generate", content=chunks(), headers=headers), 413, "PAYLOAD_TOO_LARGE")
    assert _rows(small_ctx) == before == (0, 1)
    assert small_ctx.db.run(lambda c: ledger.balance(c, account.id)).available == 10_000
    # a body within the limit still goes through
    assert small.post("/api/v1/generate", json=generate_body(), headers=account.headers).status_code == 200


def test_the_body_limit_applies_before_authentication(small: TestClient) -> None:
    """An unauthenticated caller cannot make the server read megabytes either."""
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-unknown"}
    _assert_error(small.post("/api/v1/generate", content=_one_mb_body(), headers=headers), 413, "PAYLOAD_TOO_LARGE")


def test_a_prompt_over_the_cap_is_refused_before_any_hold(client: TestClient, ctx: service.Context) -> None:
    account = make_account(ctx, credits=10_000)
    body = generate_body(prompt="x" * (MAX_PROMPT_CHARS + 1))
    error = _assert_error(client.post("/api/v1/generate", json=body, headers=account.headers), 400, "INVALID_INPUT")
    assert error["details"] == [{"field": "input.prompt", "message": "String should have at most 2500 characters"}]
    shot = {"prompt": "y" * (MAX_PROMPT_CHARS + 1), "duration": 3}
    body = generate_body(multi_shots=True, multi_prompt=[shot])
    error = _assert_error(client.post("/api/v1/generate", json=body, headers=account.headers), 400, "INVALID_INPUT")
    assert error["details"][0]["field"] == "input.multi_prompt.0.prompt"
    assert _rows(ctx) == (0, 1)
    ok = generate_body(prompt="x" * MAX_PROMPT_CHARS)
    assert client.post("/api/v1/generate", json=ok, headers=account.headers).status_code == 200


#: (method, path, request arguments); the caller's key is sent unless ``headers`` replaces it.
@pytest.mark.parametrize("limit", [0, 101, 10_000, -1])
def test_a_page_size_outside_1_to_100_is_refused(client: TestClient, ctx: service.Context, limit: int) -> None:
    account = make_account(ctx, credits=1000)
    r = client.get(f"/api/v1/tasks?limit={limit}", headers=account.headers)
    error = _assert_error(r, 400, "INVALID_INPUT")
    assert error["details"][0]["field"] == "query.limit"


def test_the_largest_page_is_100(client: TestClient, ctx: service.Context) -> None:
    account = make_account(ctx, credits=10**6)
    for i in range(101):  # straight into the store: the per-account active-task cap is not under test here
        submit(ctx.db, account.id, 10, now=T0 + timedelta(seconds=i))
    page = client.get("/api/v1/tasks?limit=100", headers=account.headers).json()["data"]
    assert len(page["tasks"]) == 100 and page["nextCursor"]
    assert len(client.get("/api/v1/tasks", headers=account.headers).json()["data"]["tasks"]) == 20  # the default


ERROR_REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/credits", {"headers": {}}),
    ("GET", "/api/v1/credits", {"headers": {"Authorization": "Basic abc"}}),
    ("GET", "/api/v1/credits", {"headers": {"Authorization": "Bearer pk-123"}}),
    ("GET", "/api/v1/credits", {"headers": {"Authorization": "Bearer sk-" + "A" * 43}}),
    ("POST", "/api/v1/generate", {"content": b"{not json"}),
    ("POST", "/api/v1/generate", {"content": b"\xff\xfe"}),
    ("POST", "/api/v1/generate", {"json": [1, 2]}),
    ("POST", "/api/v1/generate", {"json": {"input": {"prompt": "a"}}}),
    ("POST", "/api/v1/generate", {"json": {"model": "../../etc/passwd", "input": {"prompt": "a"}}}),
    ("POST", "/api/v1/generate", {"json": {"model": TEXT_TO_VIDEO, "input": {"prompt": " "}}}),
    ("POST", "/api/v1/generate", {"json": {"model": TEXT_TO_VIDEO, "input": {"prompt": "a", "duration": 99}}}),
    ("POST", "/api/v1/generate", {"json": {"model": TEXT_TO_VIDEO, "input": {"prompt": "a", "duration": 15}}}),
    ("GET", "/api/v1/tasks/../../etc/passwd", {}),
    ("GET", "/api/v1/tasks/00000000000000000000000000000000", {}),
    ("GET", "/api/v1/tasks/00000000000000000000000000000000/download?mode=proxy", {}),
    ("GET", "/api/v1/tasks/x/download?mode=ftp", {}),
    ("GET", "/api/v1/files/x.mp4?expires=1&token=abc", {}),
    ("GET", "/api/v1/models?type=speech", {}),
    ("GET", "/api/v1/tasks?limit=1000&status=done&cursor=%00", {}),
    ("POST", "/api/v1/tasks/00000000000000000000000000000000/cancel", {}),
    ("DELETE", "/api/v1/credits", {}),
    ("GET", "/no/such/route", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), ERROR_REQUESTS, ids=[f"{m} {p}" for m, p, _ in ERROR_REQUESTS])
def test_no_error_body_leaks_a_traceback_path_or_address(
    client: TestClient, ctx: service.Context, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    account = make_account(ctx, credits=10)  # too few for any generation: 402
    arguments = dict(kwargs)
    headers = arguments.pop("headers", account.headers)
    r = client.request(method, path, headers={"Content-Type": "application/json", **headers}, **arguments)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["success"] is False
    assert leaks(r.text, sent="", error=True) == [], r.text


def test_an_unexpected_database_error_is_a_bare_500(client: TestClient, ctx: service.Context) -> None:
    """A real fault below the API (a table gone) answers the generic 500: no driver message, no SQL,
    no path of the database file; the traceback goes to the log only."""
    account = make_account(ctx, credits=1000)
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=account.headers).json()["data"]["id"]
    ctx.db.run(lambda c: c.execute(sa.text("ALTER TABLE tasks RENAME COLUMN prompt TO prompt_gone")), immediate=True)
    r = client.get(f"/api/v1/tasks/{task_id}", headers=account.headers)
    assert r.status_code == 500
    assert r.json() == {"success": False, "error": {"code": "INTERNAL_ERROR", "message": "Internal server error."}}
    assert leaks(r.text, sent="", error=True) == []


# --- regressions found by fuzzing --------------------------------------------------------------


def _count_tasks(ctx: service.Context) -> int:
    from sqlalchemy import func, select

    from reelgen.store.tables import tasks

    n: int = ctx.db.run(lambda c: c.execute(select(func.count()).select_from(tasks)).scalar_one())
    return n


@pytest.mark.parametrize(
    "inp",
    [
        {"prompt": "a fox\x00"},
        {"prompt": "a fox", "multi_shots": True, "multi_prompt": [{"prompt": "\x00", "duration": 5}], "duration": 5},
    ],
    ids=["prompt", "shot-prompt"],
)
def test_regression_nul_in_a_prompt_is_400_not_500(client: TestClient, ctx: service.Context, inp: Any) -> None:
    """PostgreSQL text cannot store NUL: the insert raised and the API answered 500."""
    account = make_account(ctx, credits=1000)
    r = client.post("/api/v1/generate", json={"model": TEXT_TO_VIDEO, "input": inp}, headers=account.headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_INPUT" and "NUL" in error["details"][0]["message"]
    assert _count_tasks(ctx) == 0 and ctx.db.run(lambda c: ledger.balance(c, account.id)).available == 1000


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "ok"}, "\\ud800": 1}',
        b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "ok"}, "\\udfff\\ud800x": 1}',
    ],
)
def test_regression_a_lone_surrogate_echoed_in_an_error_is_400_not_500(
    client: TestClient, ctx: service.Context, raw: bytes
) -> None:
    """An unknown key such as "\\ud800" was echoed into the error, which UTF-8 cannot encode."""
    account = make_account(ctx, credits=1000)
    headers = {**account.headers, "Content-Type": "application/json"}
    r = client.post("/api/v1/generate", content=raw, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_INPUT"
    assert "\\ud800" in r.json()["error"]["details"][0]["field"]
    assert _count_tasks(ctx) == 0


def test_regression_an_empty_shot_list_without_multi_shots_is_accepted_as_documented(
    client: TestClient, ctx: service.Context
) -> None:
    """The document says multi_prompt is null or empty unless multi_shots is true; the server agrees."""
    account = make_account(ctx, credits=1000)
    body = generate_body(multi_shots=False, multi_prompt=[])
    assert client.post("/api/v1/generate", json=body, headers=account.headers).status_code == 200
    body = generate_body(multi_shots=False, multi_prompt=[{"prompt": "a", "duration": 3}])
    assert client.post("/api/v1/generate", json=body, headers=account.headers).status_code == 400


PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63600000000200014873b5710000000049454e44ae426082"
)


def test_regression_a_multipart_upload_with_a_second_field_is_refused(client: TestClient, ctx: service.Context) -> None:
    """The document allows one field, ``file``; the server took one extra text field (but not two)."""
    account = make_account(ctx, credits=10)
    files = {"file": ("a.png", PNG_1X1, "image/png")}
    r = client.post("/api/v1/upload", files=files, data={"note": "42"}, headers=account.headers)
    error = _assert_error(r, 400, "INVALID_INPUT")
    assert error["details"] == [{"field": "body", "message": "unexpected field 'note'"}]
    assert client.post("/api/v1/upload", files=files, headers=account.headers).status_code == 200


def test_regression_a_lone_surrogate_in_an_image_url_is_refused_at_submit(
    client: TestClient, ctx: service.Context
) -> None:
    """Found by tests/test_fuzz_parsers.py: the parser accepted it, the task was stored, and from
    then on every read of the task (and the account's task list) failed to encode: 500."""
    account = make_account(ctx, credits=1000)
    raw = b'{"model": "kling-3-0-image-to-video", "input": {"prompt": "a", "image_urls": ["https://example.com/\\ud800"]}}'
    r = client.post("/api/v1/generate", content=raw, headers={**account.headers, "Content-Type": "application/json"})
    error = _assert_error(r, 400, "INVALID_INPUT")
    assert error["details"][0]["field"] == "input.image_urls"
    assert _count_tasks(ctx) == 0
    assert client.get("/api/v1/tasks", headers=account.headers).status_code == 200


def _request_schema(client: TestClient) -> tuple[dict[str, Any], Any]:
    """The document's ``GenerateRequest`` and a validator for it (components resolvable)."""
    import jsonschema

    spec = client.get("/openapi.json").json()
    schema = {**spec["components"]["schemas"]["GenerateRequest"], "components": spec["components"]}
    return spec, jsonschema.Draft202012Validator(schema)


def test_regression_the_documented_image_url_pattern_admits_upload_urls(
    client: TestClient, ctx: service.Context
) -> None:
    """The document's ``image_urls`` pattern refused the ``reelgen-upload://`` URLs the server hands out."""
    account = make_account(ctx, credits=10_000)
    uploaded = client.post(
        "/api/v1/upload", content=PNG_1X1, headers={**account.headers, "Content-Type": "image/png"}
    ).json()["data"]["url"]
    body = {"model": "kling-3-0-image-to-video", "input": {"prompt": "a", "duration": 3, "image_urls": [uploaded]}}
    _, validator = _request_schema(client)
    assert list(validator.iter_errors(body)) == []
    assert client.post("/api/v1/generate", json=body, headers=account.headers).status_code == 200


@pytest.mark.parametrize("url", ["HTTP://", "https://", "http:///a.png", "http://:80/a.png", "https:// x"])
def test_regression_the_document_refuses_image_urls_without_a_host_as_the_parser_does(
    client: TestClient, ctx: service.Context, url: str
) -> None:
    account = make_account(ctx, credits=10_000)
    body = {"model": "kling-3-0-image-to-video", "input": {"prompt": "a", "duration": 3, "image_urls": [url]}}
    _, validator = _request_schema(client)
    assert list(validator.iter_errors(body)) != []
    error = _assert_error(client.post("/api/v1/generate", json=body, headers=account.headers), 400, "INVALID_INPUT")
    assert error["details"][0]["field"] == "input.image_urls"
    assert _count_tasks(ctx) == 0


def test_regression_the_document_bounds_a_shot_duration_as_the_parser_does(
    client: TestClient, ctx: service.Context
) -> None:
    account = make_account(ctx, credits=10_000)
    _, validator = _request_schema(client)
    for duration, documented_ok, status in ((15, True, 200), (16, False, 400), (0, False, 400)):
        shots = [{"prompt": "a", "duration": duration}]
        body = generate_body(duration=15, multi_shots=True, multi_prompt=shots)
        assert (list(validator.iter_errors(body)) == []) is documented_ok, duration
        assert client.post("/api/v1/generate", json=body, headers=account.headers).status_code == status, duration


def test_regression_the_document_refuses_an_empty_upload_as_the_server_does(
    client: TestClient, ctx: service.Context
) -> None:
    import jsonschema

    spec, _ = _request_schema(client)
    content = spec["paths"]["/api/v1/upload"]["post"]["requestBody"]["content"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("", content["image/png"]["schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"file": ""}, content["multipart/form-data"]["schema"])
    account = make_account(ctx, credits=10)
    r = client.post("/api/v1/upload", content=b"", headers={**account.headers, "Content-Type": "image/png"})
    _assert_error(r, 400, "INVALID_INPUT")


def test_the_generate_operation_states_the_rule_its_schema_cannot(client: TestClient) -> None:
    spec, _ = _request_schema(client)
    assert "add up to ``duration``" in spec["paths"]["/api/v1/generate"]["post"]["description"]
