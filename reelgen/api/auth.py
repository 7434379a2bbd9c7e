"""Bearer key → account id (after one token of the account's request rate), as ``CurrentAccount``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from reelgen import service

# Only for the OpenAPI document (so the docs page offers an Authorize button); we check ourselves.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer sk-...")


def current_account(request: Request, _: Annotated[object, Depends(bearer_scheme)] = None) -> str:
    ctx: service.Context = request.app.state.ctx
    admission = service.admit(ctx, request.headers.get("authorization"))
    # ``RateLimitHeaders`` (api/app.py) adds these to the response, whatever the route answers
    request.state.rate_limit_headers = admission.headers
    return admission.account_id


CurrentAccount = Annotated[str, Depends(current_account)]
