"""The ``Authorization`` header: ``Bearer sk-...`` → account id (after one token of the account's
request rate, ``service.admit``), as ``CurrentAccount``; and the bearer token of ``/metrics``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from reelgen import service
from reelgen.errors import ErrorCode, ReelgenError

# Only for the OpenAPI document (so the docs page offers an Authorize button); we check ourselves.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer sk-...")


def bearer_key(authorization: str | None) -> str:
    """The API key of a ``Bearer <key>`` header, or the contract's 401 codes."""
    if authorization is None or not authorization.strip():
        raise ReelgenError(ErrorCode.MISSING_AUTH_HEADER, "Missing Authorization header.")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        raise ReelgenError(ErrorCode.INVALID_AUTH_FORMAT, "Authorization header must be 'Bearer <api key>'.")
    return key


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an exact ``Bearer <token>`` header (``/metrics``), else None."""
    given = (authorization or "").strip()
    return given[len("Bearer ") :] if given.startswith("Bearer ") else None


def authorization_header(request: Request) -> str | None:
    """The one ``Authorization`` header of the request. Two of them are refused: proxies and
    frameworks disagree on which one wins, so accepting either would let a request be read as
    two different callers."""
    given = request.headers.getlist("authorization")
    if len(given) > 1:
        raise ReelgenError(ErrorCode.INVALID_AUTH_FORMAT, "Send one Authorization header, not several.")
    return given[0] if given else None


def current_account(request: Request, _: Annotated[object, Depends(bearer_scheme)] = None) -> str:
    ctx: service.Context = request.app.state.ctx
    admission = service.admit(ctx, bearer_key(authorization_header(request)))
    # ``RateLimitHeaders`` (api/app.py) adds these to the response, whatever the route answers
    request.state.rate_limit_headers = admission.headers
    return admission.account_id


CurrentAccount = Annotated[str, Depends(current_account)]
