"""``create_app(settings)``: the FastAPI app; the lifespan builds the context and the executor."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelgen import __version__, service
from reelgen.api import errors, extensions, openai_routes
from reelgen.api.head import HeadAsGet
from reelgen.api.openapi import Offer, document
from reelgen.api.routes import router
from reelgen.config import Settings
from reelgen.doors.mcp_http import PATH as MCP_PATH
from reelgen.doors.mcp_http import McpHttp
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.webhooks import Deliverer

log = logging.getLogger("reelgen.api")

#: The playground: static files, no build step (``/`` is its page, ``/web/*`` its script and style).
WEB_DIR = Path(__file__).parent / "web"
#: The page holds an API key: no inline or third-party script, no framing, no referrer.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' https: http: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413), counting while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ReelgenError(ErrorCode.PAYLOAD_TOO_LARGE, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"The request body is larger than {self.limit} bytes."

    async def _reject(self, send: Send) -> None:
        response = errors.error_response(ReelgenError(ErrorCode.PAYLOAD_TOO_LARGE, self._message()))
        await response({"type": "http"}, _empty_receive, send)


class RateLimitHeaders:
    """Add the ``X-RateLimit-*`` headers the auth dependency left in the request state to the
    response, whatever answered it (the route, or an error handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            extra = state.get("rate_limit_headers")
            if message["type"] == "http.response.start" and extra:
                present = {k.lower() for k, _ in message.get("headers", [])}
                added = [
                    (k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower().encode() not in present
                ]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(settings: Settings, *, start_executor: bool = True, ctx: service.Context | None = None) -> FastAPI:
    """The API app. ``start_executor=False`` serves the API only (tests, or API-only replicas)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ctx or service.Context.from_settings(settings)
        app.state.ctx = context
        executor = None
        if start_executor:
            from reelgen.executor.base import pick

            executor = pick(settings)
            executor.start()
            context.on_submit = executor.notify
        app.state.executor = executor
        # every API process delivers due webhooks from the outbox (rows are leased: no double sends)
        deliverer = Deliverer(context.db, context.settings, context.secret)
        deliverer.start()
        try:
            async with mcp.running():
                yield
        finally:
            deliverer.stop()
            if executor is not None:
                executor.stop()
            if ctx is None:
                context.db.dispose()

    app = FastAPI(
        title="reelgen",
        version=__version__,
        description="Self-hostable, VicSee Kling 3.0-compatible video generation API.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(router)
    app.include_router(extensions.router)
    app.include_router(openai_routes.router)
    mcp = McpHttp()  # the MCP server over streamable HTTP (reelgen/doors/mcp_http.py)
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp, methods=["GET", "POST", "DELETE"]))

    @app.get("/", include_in_schema=False)
    def playground() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    def openapi() -> dict[str, Any]:
        upload_limit = min(settings.max_image_bytes, settings.max_body_bytes)
        from reelgen.profiles import get_profile

        served = ctx or getattr(app.state, "ctx", None)
        profile = served.profile if served is not None else get_profile(settings.profile, settings.profiles_file)
        offer = Offer.of(profile)
        return document(app, (router, extensions.router), max_upload_bytes=upload_limit, offer=offer)

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    return app
