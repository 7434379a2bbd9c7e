"""The properties every input must keep, as functions of raw bytes: shared by the hypothesis tests
(``tests/test_fuzz_parsers.py``, bounded, in CI) and the atheris harness
(``tests/fuzz/atheris_parsers.py``, coverage-guided, run by hand or nightly).

A target returns normally for any input the code handles as designed (accepted, or refused with
the contract's error); anything else raises, and the fuzzer keeps the input as a crash.
"""

from __future__ import annotations

import json
from typing import Any

from reelgen.api.errors import envelope
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.safehttp import MAX_URL_LENGTH, FetchPolicy, check_address, validate_url
from reelgen.schemas import IMAGE_TO_VIDEO, MAX_DURATION, MAX_PROMPT_CHARS, MIN_DURATION, TEXT_TO_VIDEO, parse_generate

#: What ``parse_generate`` may refuse with (API.md, POST /api/v1/generate).
GENERATE_CODES = {
    ErrorCode.INVALID_JSON,
    ErrorCode.MISSING_MODEL,
    ErrorCode.INVALID_MODEL,
    ErrorCode.MISSING_PROMPT,
    ErrorCode.INVALID_INPUT,
}
POLICIES = (FetchPolicy(), FetchPolicy(allow_private=True))


def _renders(error: ReelgenError) -> None:
    """The error's envelope encodes as the API would send it (UTF-8 JSON)."""
    json.dumps(envelope(str(error.code), error.message, error.details), ensure_ascii=False).encode("utf-8")


def check_generate_body(body: Any) -> None:
    """``parse_generate`` accepts ``body`` with every contract rule holding, or refuses it cleanly."""
    try:
        request = parse_generate(body)
    except ReelgenError as exc:
        assert exc.code in GENERATE_CODES, exc
        assert exc.code != ErrorCode.INVALID_INPUT or exc.details, exc
        _renders(exc)
        return
    inp = request.input
    assert request.model in (TEXT_TO_VIDEO, IMAGE_TO_VIDEO)
    assert MIN_DURATION <= inp.duration <= MAX_DURATION
    assert inp.prompt.strip() and len(inp.prompt) <= MAX_PROMPT_CHARS and "\x00" not in inp.prompt
    if request.model == IMAGE_TO_VIDEO:
        assert inp.image_urls is not None and 1 <= len(inp.image_urls) <= 2 and inp.aspect_ratio is None
    else:
        assert inp.image_urls is None and inp.aspect_ratio is not None
    if inp.multi_shots:
        assert inp.multi_prompt and sum(s.duration for s in inp.multi_prompt) == inp.duration
    else:
        assert not inp.multi_prompt
    # what the service stores and echoes must encode (no lone surrogates, no NUL in text columns)
    stored = json.dumps(inp.model_dump(mode="json", exclude_none=True), ensure_ascii=False)
    stored.encode("utf-8")
    inp.prompt.encode("utf-8")


def check_generate_bytes(raw: bytes) -> None:
    """The route's path: JSON-decode the body (refused when not JSON), then parse it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return  # INVALID_JSON at the route
    check_generate_body(body)


def check_url(url: str) -> None:
    """``validate_url`` accepts only what it may fetch, in a canonical form, or refuses cleanly."""
    for policy in POLICIES:
        try:
            parsed = validate_url(url, policy)
        except ReelgenError as exc:
            assert exc.code == ErrorCode.IMAGE_FETCH_FAILED, exc
            _renders(exc)
            continue
        assert len(url) <= MAX_URL_LENGTH
        assert parsed.scheme in ("http", "https") and policy.port_allowed(parsed.port)
        assert parsed.target.startswith("/") and parsed.target.isascii() and parsed.host.isascii()
        assert "@" not in parsed.host_header and not any(c <= " " for c in str(parsed))
        if parsed.ip is not None:
            check_address(parsed.ip, allow_private=policy.allow_private)  # raises if blocked
        # canonical: validating the canonical form again gives the same URL
        assert validate_url(str(parsed), policy) == parsed, (url, str(parsed))


def check_url_bytes(raw: bytes) -> None:
    check_url(raw.decode("utf-8", "surrogateescape"))  # invalid bytes become lone surrogates
