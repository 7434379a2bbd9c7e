"""The one table from error code to HTTP status, and the error envelope.

Every ``ReelgenError`` raised below the API lands here; so do FastAPI's validation errors,
unknown routes, wrong methods and unexpected exceptions (500 with a generic message; the
traceback goes to the log only, never into a response).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelgen.errors import ErrorCode, ReelgenError

log = logging.getLogger("reelgen.api")

STATUS: dict[ErrorCode, int] = {
    ErrorCode.MISSING_AUTH_HEADER: 401,
    ErrorCode.INVALID_AUTH_FORMAT: 401,
    ErrorCode.INVALID_KEY_FORMAT: 401,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.MISSING_MODEL: 400,
    ErrorCode.INVALID_MODEL: 400,
    ErrorCode.MISSING_PROMPT: 400,
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.INSUFFICIENT_CREDITS: 402,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_TOKEN: 403,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ACCOUNT_NOT_FOUND: 404,
    ErrorCode.KEY_NOT_FOUND: 404,
    ErrorCode.NO_PREVIEW: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.NO_RESULT: 409,
    ErrorCode.NOT_CANCELLABLE: 409,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.DUPLICATE_EXTERNAL_TASK_ID: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UPLOAD_QUOTA_EXCEEDED: 413,
    ErrorCode.RANGE_NOT_SATISFIABLE: 416,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.NOT_SUPPORTED: 501,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}


def status_for(code: ErrorCode | str) -> int:
    return STATUS.get(code, 500) if isinstance(code, ErrorCode) else 500


def _text(value: Any) -> Any:
    """``value`` with lone surrogates escaped (a message may echo a JSON key such as "\\ud800",
    which UTF-8 cannot encode: rendering the response would fail with a 500)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def envelope(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": _text(message)}
    if details:
        error["details"] = [{k: _text(v) for k, v in d.items()} for d in details]
    return {"success": False, "error": error}


def error_response(exc: ReelgenError) -> JSONResponse:
    status = status_for(exc.code)
    if status >= 500 and exc.code not in (ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.NOT_SUPPORTED):
        # A ReelgenError that is not an API error (e.g. a failure code) reaching a route is a bug.
        log.error("unmapped error reached the API: %r", exc)
        return JSONResponse(envelope(ErrorCode.INTERNAL_ERROR, "Internal server error."), status_code=500)
    headers = dict(exc.headers)
    if exc.code == ErrorCode.SERVICE_UNAVAILABLE:
        headers.setdefault("Retry-After", "1")
    return JSONResponse(envelope(str(exc.code), exc.message, exc.details), status_code=status, headers=headers)


def _allow(request: Request) -> dict[str, str]:
    """``Allow`` listing the methods of every route on the request's path (Starlette names only the
    first route's, when several routes share a path with different methods)."""
    from starlette.routing import Match, Route

    def routes(items: Any) -> Any:
        for item in items:
            inner = getattr(item, "original_router", None)  # an included router (FastAPI keeps it whole)
            yield from routes(inner.routes) if inner is not None else (item,)

    methods: set[str] = set()
    for route in routes(request.app.routes):
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**request.scope, "method": next(iter(route.methods))})
            if match is Match.FULL:
                methods |= route.methods
    return {"Allow": ", ".join(sorted(methods))} if methods else {}


def install(app: FastAPI) -> None:
    async def on_reelgen(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ReelgenError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
        message = f"Invalid request parameters: {summary}" if summary else "Invalid request parameters."
        return JSONResponse(envelope(ErrorCode.INVALID_INPUT, message, details), status_code=400)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return JSONResponse(envelope(ErrorCode.NOT_FOUND, "Not found."), status_code=404)
        if exc.status_code == 405:
            return JSONResponse(
                envelope(ErrorCode.METHOD_NOT_ALLOWED, "Method not allowed."),
                status_code=405,
                headers={**(exc.headers or {}), **_allow(request)},
            )
        code = ErrorCode.INVALID_INPUT if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
        return JSONResponse(envelope(code, "Request failed."), status_code=exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(envelope(ErrorCode.INTERNAL_ERROR, "Internal server error."), status_code=500)

    app.add_exception_handler(ReelgenError, on_reelgen)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
