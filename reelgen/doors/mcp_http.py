"""``/mcp`` on ``reelgen serve``: the MCP server over streamable HTTP, stateless, behind the same
bearer keys as ``/api/v1``. The key is checked (and counted against the account's request rate)
once per HTTP request, before the MCP SDK sees it; the tools then act as that account through the
service in-process (``doors.backends.ServiceBackend``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from reelgen import service
from reelgen.api.auth import bearer_key
from reelgen.api.errors import error_response
from reelgen.doors.backends import ServiceBackend
from reelgen.doors.mcp_tools import build_server
from reelgen.errors import ErrorCode, ReelgenError

__all__ = ["PATH", "McpHttp"]

PATH = "/mcp"
_ACCOUNT = "reelgen_account"


def _backend(ctx: Context) -> ServiceBackend:
    request = ctx.request_context.request
    if not isinstance(request, Request) or _ACCOUNT not in request.scope.get("state", {}):
        raise ReelgenError(ErrorCode.MISSING_AUTH_HEADER, "Missing Authorization header.")
    app_ctx: service.Context = request.app.state.ctx
    return ServiceBackend(app_ctx, request.scope["state"][_ACCOUNT], str(request.base_url))


class McpHttp:
    """The ASGI endpoint of ``/mcp``; ``running()`` belongs in the app's lifespan."""

    def __init__(self) -> None:
        self.server = build_server(_backend)
        # builds the session manager; hosts are not pinned: the bearer key is the gate here
        self.server.streamable_http_app(
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        ctx: service.Context = request.app.state.ctx
        try:
            key = bearer_key(request.headers.get("authorization"))
            admission = await anyio.to_thread.run_sync(service.admit, ctx, key)
        except ReelgenError as exc:
            response = error_response(exc)
            if response.status_code == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[_ACCOUNT] = admission.account_id
        state["rate_limit_headers"] = admission.headers
        await self.server.session_manager.handle_request(scope, receive, send)
