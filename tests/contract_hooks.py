"""Schemathesis hooks for the contract run (``SCHEMATHESIS_HOOKS=tests.contract_hooks``).

``no_leaks`` (RELIABILITY 19) reads every response of the run with ``tests.leaks.leaks``: no body
may carry a Python traceback, a source file, an absolute server path, a database driver's exception
or, in an error, an internal address. ``filter_failure`` waives the refusals JSON Schema cannot
predict: the shot-duration sum of ``/generate``, an upload URL naming no upload of the caller's, an
upload that is no image, a callback URL whose host does not resolve to a public address, a
repeated ``external_task_id``, a presigned upload's signature or bytes, and the same upload rules
on ``/v1/videos``' ``input_reference``.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from tests.leaks import leaks


def _sent(case: Any, response: Any) -> str:
    request = response.request
    parts = [str(request.url), str(getattr(request, "body", b"") or b""), repr(case.body), repr(case.query)]
    parts.append(repr(case.path_parameters))
    parts.append(repr(case.headers))
    return "\n".join(parts)


@schemathesis.check
def no_leaks(ctx: Any, response: Any, case: Any) -> bool | None:
    """No traceback, source file, server path, driver error or (in errors) internal address."""
    try:
        body = response.text if isinstance(response.text, str) else ""
    except UnicodeDecodeError:  # a binary body (an uploaded image) carries no text to leak
        body = ""
    found = leaks(body, _sent(case, response), error=response.status_code >= 400)
    if found:
        raise AssertionError(f"the {response.status_code} response leaks {', '.join(found)}: {body[:500]!r}")
    return None


def shots_disagree_with_duration(body: Any) -> bool:
    """A multi-shot body whose shot durations do not add up to ``duration`` (default 5).

    The one rule of ``POST /api/v1/generate`` that JSON Schema cannot state (a sum across
    fields), so schema-valid bodies may break it; the server refuses them with 400 INVALID_INPUT.
    """
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        return False
    inp = body["input"]
    shots = inp.get("multi_prompt")
    if inp.get("multi_shots") is not True or not isinstance(shots, list):
        return False
    # the parser takes whole-number floats (13.0) as integers, so the sum counts them too
    total = sum(
        s["duration"]
        for s in shots
        if isinstance(s, dict) and isinstance(s.get("duration"), int | float) and not isinstance(s["duration"], bool)
    )
    return bool(total != inp.get("duration", 5))


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure except a schema-valid request refused for a rule no schema can state: shot
    durations that do not add up, an upload URL naming no upload of the caller's, or an upload that
    is not a decodable image."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return True
    # VicSee's tools: a documented 501 NOT_SUPPORTED, not a server fault
    if failure.code == "ST101" and response.status_code == 501:
        return error.get("code") != "NOT_SUPPORTED"
    if failure.code != "ST202" or response.status_code not in (400, 403, 409):
        return True
    # a presigned upload's token is an HMAC only the server can make; its bytes must be the declared ones
    if case.operation.path == "/api/v1/uploads/{upload_id}" and case.operation.method.upper() == "PUT":
        return error.get("code") not in ("INVALID_TOKEN", "INVALID_INPUT")
    # Kling's external_task_id is unique per account: a generated body may repeat an earlier one
    if response.status_code == 409:
        return error.get("code") != "DUPLICATE_EXTERNAL_TASK_ID"
    if response.status_code != 400:
        return True
    if case.operation.path == "/v1/videos":  # OpenAI's envelope: the same two rules on input_reference
        message = str(error.get("message", ""))
        refused = error.get("code") == "invalid_input" and error.get("param") == "input_reference"
        return not (refused and ("no such upload" in message or "image" in message.lower()))
    if error.get("code") != "INVALID_INPUT":
        return True
    if shots_disagree_with_duration(case.body) and "shot durations add up to" in error.get("message", ""):
        return False
    fields = [d.get("field") for d in error.get("details", [])]
    # a callback URL must reach a public host that resolves; a schema can only state its shape
    if fields and all(f in ("callback_url", "input.callback_url") for f in fields):
        return False
    # an upload URL must name one of the caller's uploads; a schema can only state its shape
    if all(str(f).startswith("input.image_urls.") for f in fields) and "no such upload" in error.get("message", ""):
        return False
    # an upload must decode as a JPEG, PNG or WEBP image; a schema can only say "binary"
    return not (fields == ["file"] and case.operation.path == "/api/v1/upload")
