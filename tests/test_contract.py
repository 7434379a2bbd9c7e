"""The contract under fuzzing (RELIABILITY 16, 19, 20): schemathesis against our own OpenAPI document.

Each run starts the real app on a loopback socket (tiny profile, no workers), gives two accounts
plenty of credits and runs ``st run`` with every check (``--checks all``: server errors, status
codes, content types, headers, response schemas, negative data rejection, positive data
acceptance, missing headers, unsupported methods, ignored auth, use after free, resource
availability and object-level authorization between the two accounts) plus our ``no_leaks`` check
(``tests/contract_hooks.py``). Once as each account, on SQLite and PostgreSQL; deterministic and
bounded (``MAX_EXAMPLES`` per operation), so a failure reproduces with the printed command.

Every failure a run found is fixed and kept as a named regression test in ``tests/test_limits.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.openapi import PROMPT
from reelgen.store import ledger
from tests.api_fixtures import LiveServer
from tests.contract_hooks import shots_disagree_with_duration
from tests.factories import Account, make_account
from tests.leaks import leaks

ROOT = Path(__file__).resolve().parent.parent
MAX_EXAMPLES = 25
USERS = ("alice", "bob")
#: Server-Sent Event streams stay open until their task ends, and this server runs no workers: a
#: stream of a pending task would only end at the request timeout. tests/test_api*.py cover them.
STREAMS = ("/events",)
#: operations whose success is not a JSON envelope: metrics text, an upload's bytes, a preview image
BINARY = ("/metrics", "/api/v1/uploads/{upload_id}", "/api/v1/tasks/{task_id}/preview")


@pytest.fixture
def two_accounts(ctx: service.Context) -> dict[str, Account]:
    """Two accounts with ample credits and no rate limits, so the run reaches every route's logic
    (a 429 would only end its chain of linked requests; tests/test_api_extensions.py covers limits)."""
    accounts = {name: make_account(ctx, credits=10**9, name=name) for name in USERS}
    for account in accounts.values():
        service.set_limits(ctx, account.id, rpm=0, max_active=0)
    return accounts


def _schemathesis(
    tmp_path: Path, url: str, accounts: dict[str, Account], user: str
) -> subprocess.CompletedProcess[str]:
    auth = tmp_path / "auth.json"
    auth.write_text(
        json.dumps(
            {
                "auth": [
                    {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {acc.key}"}]}
                    for name, acc in accounts.items()
                ]
            }
        )
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[auth.wfc]\npath = "{auth}"\nuser = "{user}"\npeers = {json.dumps(list(accounts))}\n')
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
        "--generation-allow-x00", "true", "--workers", "1",
        "--continue-on-failure", "--no-color", "--report-dir", str(tmp_path / "report"), "--request-timeout", "30",
        "--exclude-path-regex", f"({'|'.join(STREAMS)})$",
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:]
    return out


def test_schemathesis_finds_no_failure(
    live_api: LiveServer, ctx: service.Context, two_accounts: dict[str, Account], tmp_path: Path
) -> None:
    # Alice's key on SQLite, Bob's on PostgreSQL: each account and each backend once, within the CI
    # budget. Every run also replays each read as the other account (object_level_authorization).
    user = USERS[0] if ctx.db.url.startswith("sqlite") else USERS[1]
    spec = httpx.get(f"{live_api.url}/openapi.json").json()
    operations = sum(len(item) for path, item in spec["paths"].items() if not path.endswith(STREAMS))
    out = _schemathesis(tmp_path, live_api.url, two_accounts, user)
    tested = re.search(r"Tested:\s+(\d+)", out)
    assert tested is not None and int(tested.group(1)) == operations, out[-3000:]
    generated = re.search(r"(\d+) generated", out)
    assert generated is not None and int(generated.group(1)) >= operations * 10, out[-3000:]
    # what it created was reserved properly, and nothing it sent moved money wrongly
    assert ctx.db.run(ledger.check) == []


# --- the OpenAPI document itself ---------------------------------------------------------------


def test_every_operation_declares_its_envelopes_and_statuses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer sk-...",
    }
    for path, item in spec["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "422" not in responses or method == "post", (method, path)  # FastAPI's default is gone
            if path.startswith("/v1/videos"):  # OpenAI's shapes (tests/test_openai_videos.py)
                errors = {s for s in responses if s >= "400"}
                assert {"400", "401", "413"} <= errors, (method, path)
                for status in errors:
                    schema = responses[status]["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/OpenAIError"}, (method, path, status)
                continue
            ok = responses["200"]["content"]
            if "application/json" in ok:
                assert ok["application/json"]["schema"]["properties"]["success"] == {"const": True}
            else:  # the routes that answer another media type declare it themselves
                # (the event stream, the metrics page, an upload's image for its owner)
                assert path.endswith(STREAMS) or path in BINARY, (method, path, ok)
            errors = {s for s in responses if s >= "400"}
            assert {"400", "413"} <= errors, (method, path)
            for status in errors:
                assert responses[status]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorEnvelope"
                }
            if op.get("security"):
                assert "401" in errors, (method, path)
    listing = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert listing["limit"]["minimum"] == 1 and listing["limit"]["maximum"] == 100
    assert {"pending", "processing", "completed", "failed", "cancelled"} == set(listing["status"]["anyOf"][0]["enum"])
    generate = spec["paths"]["/api/v1/generate"]["post"]
    assert {"400", "401", "402", "413", "429"} <= set(generate["responses"])
    assert {"get_api_v1_tasks_task_id", "get_api_v1_tasks_task_id_download"} <= set(
        generate["responses"]["200"]["links"]
    )


def test_the_documented_error_envelope_matches_what_the_server_sends(client: TestClient) -> None:
    import jsonschema

    spec = client.get("/openapi.json").json()
    schema = spec["components"]["schemas"]["ErrorEnvelope"]
    for response in (
        client.get("/api/v1/credits"),
        client.post("/api/v1/generate", content=b"{", headers={"Authorization": "Bearer sk-x"}),
        client.get("/nope"),
        client.delete("/api/v1/credits"),
    ):
        assert response.status_code >= 400
        jsonschema.validate(response.json(), schema)


def test_the_prompt_pattern_agrees_with_the_parser_on_every_code_point() -> None:
    """The documented pattern and ``str.strip()`` disagree on no character (Python and ECMA
    whitespace differ, so the pattern spells whitespace out); NUL is refused by both."""
    pattern = re.compile(PROMPT)
    disagree = [
        hex(cp)
        for cp in range(sys.maxunicode + 1)
        if not 0xD800 <= cp <= 0xDFFF and bool(pattern.search(chr(cp))) != (bool(chr(cp).strip()) and cp != 0)
    ]
    assert disagree == []


# --- the no_leaks check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        'Traceback (most recent call last):\n  File "/srv/app.py", line 3, in <module>',
        '{"message": "error in reelgen/service.py"}',
        '{"message": "cannot open /var/lib/reelgen/reelgen.db"}',
        '{"message": "(psycopg.errors.UniqueViolation) duplicate key"}',
        '{"message": "sqlalchemy.exc.OperationalError: database is locked"}',
    ],
)
def test_no_leaks_flags_tracebacks_paths_and_driver_errors(body: str) -> None:
    assert leaks(body, sent="", error=False)


def test_no_leaks_flags_internal_addresses_in_errors_only() -> None:
    body = '{"message": "could not reach http://10.0.3.7:5432"}'
    assert leaks(body, sent="", error=True) == ["an internal address ('10.0.3.7')"]
    assert leaks(body, sent="", error=False) == []
    # echoing what the caller sent leaks nothing
    assert (
        leaks('{"message": "Unknown model \'/etc/passwd.py\'"}', sent='{"model": "/etc/passwd.py"}', error=True) == []
    )


def test_the_shot_sum_waiver_matches_only_bodies_breaking_that_rule() -> None:
    shot = {"prompt": "a", "duration": 2}
    assert shots_disagree_with_duration({"input": {"multi_shots": True, "multi_prompt": [shot], "duration": 3}})
    assert shots_disagree_with_duration({"input": {"multi_shots": True, "multi_prompt": [shot]}})  # default 5
    assert not shots_disagree_with_duration({"input": {"multi_shots": True, "multi_prompt": [shot], "duration": 2}})
    assert not shots_disagree_with_duration({"input": {"multi_shots": False, "multi_prompt": [shot], "duration": 3}})
    assert not shots_disagree_with_duration([1])
    # whole-number floats count, as the parser takes them: 13.0 + 5 is 18, not 5
    assert shots_disagree_with_duration(
        {"input": {"multi_shots": True, "multi_prompt": [{"prompt": "a", "duration": 13.0}, shot | {"duration": 5}]}}
    )


def test_the_document_builds_each_envelope_around_the_model_its_route_declares(client: TestClient) -> None:
    """Routes declare their success model (``routes.success``); the document has no list of its own."""
    from reelgen.api import extensions, routes
    from reelgen.api.openapi import declared_models

    spec = client.get("/openapi.json").json()
    declared = declared_models((routes.router, extensions.router))
    assert declared[("get", "/api/v1/tasks/{task_id}")].__name__ == "TaskView"
    for (method, path), model in declared.items():
        data = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        data = data["properties"]["data"]
        if "anyOf" in data:  # a route answering one of several models (the upload: bytes or presign)
            assert [d["$ref"] for d in data["anyOf"]] == [f"#/components/schemas/{m.__name__}" for m in model.__args__]
            continue
        name = model.__args__[0].__name__ if hasattr(model, "__args__") else model.__name__
        ref = data["items"]["$ref"] if data.get("type") == "array" else data["$ref"]
        assert ref == f"#/components/schemas/{name}", (method, path)
    undeclared = spec["paths"]["/api/v1/webhooks/secret"]["get"]["responses"]["200"]["content"]
    assert undeclared["application/json"]["schema"]["properties"]["data"] == {}
