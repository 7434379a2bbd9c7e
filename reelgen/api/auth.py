"""Bearer key → account id, as the ``CurrentAccount`` dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from reelgen import service

# Only for the OpenAPI document (so the docs page offers an Authorize button); we check ourselves.
bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer sk-...")


def current_account(request: Request, _: Annotated[object, Depends(bearer_scheme)] = None) -> str:
    ctx: service.Context = request.app.state.ctx
    return service.authenticate(ctx, request.headers.get("authorization"))


CurrentAccount = Annotated[str, Depends(current_account)]
