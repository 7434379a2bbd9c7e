"""Fixtures for the HTTP layer: settings, a service context, the app in-process, and a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.app import create_app
from reelgen.api.server import uvicorn_config
from reelgen.config import Settings
from reelgen.profiles import get_profile
from reelgen.storage import pick
from reelgen.store.db import Database


def make_settings(tmp_path: Path, db: Database, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": db.url,
        "profile": "ltx-2-tiny",
        "secret_key": "test-secret-not-for-production",
        "allow_private_image_hosts": True,
        "lease_seconds": 10.0,
        "heartbeat_seconds": 0.5,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, db: Database) -> Settings:
    return make_settings(tmp_path, db)


def make_ctx(settings: Settings, db: Database) -> service.Context:
    return service.Context(
        db=db,
        settings=settings,
        profile=get_profile(settings.profile),
        storage=pick(settings),
        secret=settings.resolved_secret(),
    )


@pytest.fixture
def ctx(settings: Settings, db: Database) -> service.Context:
    return make_ctx(settings, db)


@pytest.fixture
def client(ctx: service.Context) -> Iterator[TestClient]:
    app = create_app(ctx.settings, start_executor=False, ctx=ctx)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The real app on a loopback socket (uvicorn in a thread), optionally with its workers."""

    def __init__(self, ctx: service.Context, *, start_executor: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(ctx.settings, start_executor=start_executor, ctx=ctx)
        # the production server: uvicorn with reelgen's request read deadline (reelgen/api/server.py)
        config = uvicorn_config(
            app,
            "127.0.0.1",
            self.port,
            ctx.settings.request_read_timeout_seconds,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def live_api(ctx: service.Context) -> Iterator[LiveServer]:
    """The API alone on a real socket (no workers)."""
    with LiveServer(ctx, start_executor=False) as server:
        yield server


@pytest.fixture
def live(ctx: service.Context) -> Iterator[LiveServer]:
    """The API and its local executor (one tiny-engine worker subprocess on the CPU)."""
    with LiveServer(ctx, start_executor=True) as server:
        yield server
