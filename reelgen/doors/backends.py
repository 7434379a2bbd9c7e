"""Where the MCP tools' calls go: ``ServiceBackend`` calls the service functions in-process (the
``/mcp`` route of ``reelgen serve``, as the caller's account); ``ClientBackend`` goes through the SDK
to a server (``reelgen mcp`` on stdio, with ``REELGEN_BASE_URL`` / ``REELGEN_API_KEY``). Both hand
back the ``/api/v1`` shapes (``client.Task`` for a task), so the tools render one thing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import httpx
from httpx_sse import aconnect_sse

from reelgen.client import AsyncClient, Task, event_task  # event_task: status/progress events only

__all__ = ["Backend", "ClientBackend", "ServiceBackend"]

API = "/api/v1"


class Backend(Protocol):
    #: whether image paths name files the caller can read (stdio: the caller's machine); over HTTP
    #: a path would name a file on the server, so only URLs are taken there
    local_files: bool

    async def models(self) -> list[dict[str, Any]]: ...
    async def estimate(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def upload(self, data: bytes) -> str: ...
    async def generate(self, body: dict[str, Any]) -> Task: ...
    async def get(self, task_id: str) -> Task: ...
    async def cancel(self, task_id: str) -> Task: ...
    async def list(self, status: str | None, limit: int, cursor: str | None) -> tuple[list[Task], str | None]: ...
    async def credits(self) -> dict[str, Any]: ...
    async def size(self, task: Task) -> int | None: ...
    def follow(self, task_id: str) -> AsyncIterator[Task]: ...


class ServiceBackend:
    """The service itself, as ``account_id``; result URLs are built on ``base_url``."""

    local_files = False

    def __init__(self, ctx: Any, account_id: str, base_url: str) -> None:
        self.ctx, self.account, self.base_url = ctx, account_id, base_url

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(self.ctx, *args, **kwargs))

    async def models(self) -> list[dict[str, Any]]:
        from reelgen import service

        found: list[dict[str, Any]] = await self._run(service.models)
        return found

    async def estimate(self, body: dict[str, Any]) -> dict[str, Any]:
        from reelgen import service

        found: dict[str, Any] = await self._run(service.estimate, self.account, body)
        return found

    async def upload(self, data: bytes) -> str:
        from reelgen import service

        return str((await self._run(service.upload, self.account, data))["url"])

    async def generate(self, body: dict[str, Any]) -> Task:
        from reelgen import service

        accepted = await self._run(service.submit, self.account, body)
        task = await self.get(accepted["id"])
        return task.model_copy(update={"creditsRemaining": accepted["creditsRemaining"]})

    async def get(self, task_id: str) -> Task:
        from reelgen import service

        return Task.from_api(await self._run(service.get_task, self.account, task_id, self.base_url))

    async def cancel(self, task_id: str) -> Task:
        from reelgen import service

        return Task.from_api(await self._run(service.cancel, self.account, task_id, self.base_url))

    async def list(self, status: str | None, limit: int, cursor: str | None) -> tuple[list[Task], str | None]:
        from reelgen import service

        page = await self._run(
            service.list_tasks, self.account, self.base_url, status=status, limit=limit, cursor=cursor
        )
        return [Task.from_api(t) for t in page["tasks"]], page["nextCursor"]

    async def credits(self) -> dict[str, Any]:
        from reelgen import service

        found: dict[str, Any] = await self._run(service.credits, self.account)
        return found

    async def size(self, task: Task) -> int | None:
        from reelgen import service

        if task.status != "completed":
            return None
        result = await self._run(service.result_for_owner, self.account, task.id)
        result.file.close()  # only its size is wanted
        return int(result.size)

    async def follow(self, task_id: str) -> AsyncIterator[Task]:
        from reelgen import service

        events = await service.task_events(self.ctx, self.account, task_id, self.base_url)
        async for event in events:
            if event.kind in ("status", "progress") and event.task is not None:  # not previews, keep-alives
                yield Task.from_api(event.task)


class ClientBackend:
    """A reelgen server through the SDK (``REELGEN_BASE_URL`` / ``REELGEN_API_KEY``)."""

    local_files = True

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def models(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in await self.client.models()]

    async def estimate(self, body: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = await self.client._call("POST", f"{API}/estimate", json=body)
        return found

    async def upload(self, data: bytes) -> str:
        found = await self.client._call("POST", f"{API}/upload", files={"file": ("image", data)})
        return str(found["url"])

    async def generate(self, body: dict[str, Any]) -> Task:
        return Task.from_api(await self.client._call("POST", f"{API}/generate", json=body))

    async def get(self, task_id: str) -> Task:
        return await self.client.get(task_id)

    async def cancel(self, task_id: str) -> Task:
        return Task.from_api(await self.client._call("POST", f"{API}/tasks/{task_id}/cancel"))

    async def list(self, status: str | None, limit: int, cursor: str | None) -> tuple[list[Task], str | None]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        page = await self.client._call("GET", f"{API}/tasks", params=params)
        return [Task.from_api(t) for t in page["tasks"]], page.get("nextCursor")

    async def credits(self) -> dict[str, Any]:
        return (await self.client.credits()).model_dump()

    async def size(self, task: Task) -> int | None:
        """The MP4's size from its (signed) URL: one byte asked for, the total read from Content-Range."""
        url = task.video_url
        if task.status != "completed" or url is None:
            return None
        # a bare client: the URL is signed (or a bucket's presigned URL), the key is not sent along
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", url, headers={"Range": "bytes=0-0"}) as response,
        ):
            await response.aread()  # the one byte: the server finishes its response before we close
            total = response.headers.get("content-range", "").rpartition("/")[2]
            if total.isdigit():
                return int(total)
            length = response.headers.get("content-length", "")
            return int(length) if response.status_code == 200 and length.isdigit() else None

    async def follow(self, task_id: str) -> AsyncIterator[Task]:
        """The task's Server-Sent Events (``/tasks/{id}/events``): one ``Task`` per event."""
        first = await self.client.get(task_id)  # an unknown id is an ordinary TASK_NOT_FOUND
        yield first
        if first.is_terminal:
            return
        async with aconnect_sse(self.client._http, "GET", f"{API}/tasks/{task_id}/events", timeout=None) as source:
            async for event in source.aiter_sse():
                task = event_task(event.event, event.data)
                if task is not None:
                    yield task


def read_image(path: str) -> bytes:
    """The bytes of a local image path (``reelgen mcp`` on stdio only)."""
    return Path(path).expanduser().read_bytes()
