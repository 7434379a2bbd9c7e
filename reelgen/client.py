"""The Python SDK: ``Client`` and ``AsyncClient`` for the reelgen HTTP API (and VicSee's hosted Kling 3.0 API).

Both talk only to the public API (``/api/v1``): ``generate`` queues a task (``extend`` continues a
completed one), ``get`` reads it,
``list`` pages through the caller's tasks, ``cancel`` stops one, ``wait`` follows it until it ends
(the server's event stream, ``/tasks/{id}/events``; polling 1 s, then x1.5 per poll, at most 10 s
apart, where the stream is not offered or breaks), ``download`` saves its MP4, ``preview`` reads
its latest live preview (an animated WebP) while it runs, ``upload`` sends a
local image by VicSee's presign flow (``generate`` does so for local paths in ``image_urls``),
``credits`` and ``models`` read the account and the catalogue. The base URL and key come
from the arguments or ``REELGEN_BASE_URL`` / ``REELGEN_API_KEY``; ``transport=`` takes any httpx
transport (an ASGI app in process, a proxy, a test double for someone else's service).

Every failure is a ``ReelgenError``: the server's error envelope keeps its ``code``, ``message``,
``status`` and ``details``; a network failure is ``CONNECTION_ERROR``; ``wait`` raises
``WAIT_TIMEOUT`` when its time is up and ``TASK_FAILED`` (naming the task's own error code) when
the task failed or was cancelled.

Responses are the wire models of ``reelgen.schemas``. Tasks are normalised across the variants
the hosted service is known to send: status ``success`` (or ``queued``) for ``completed`` (or
``pending``), the video under ``result.url``, ``output.url``, ``output.video_url`` or a
``videos[...]`` list, and a bare string ``error``; ``Task.video_url`` is the one place to read it.

Over 400 lines on purpose: ``Client`` and ``AsyncClient`` are twins (as in httpx), method for
method, and read best side by side; what they share (request building, response parsing) is
written once above them.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import VIDEO_EXTEND, CreditsView, DownloadView, ModelView, PresignView, TaskView

__all__ = ["DEFAULT_BASE_URL", "AsyncClient", "Client", "ProgressCallback", "Task", "TaskPage", "data_uri"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
API = "/api/v1"
DEFAULT_WAIT_TIMEOUT = 1800.0
BACKOFF_FACTOR = 1.5
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: Retried by ``wait`` until its deadline: the server or the network will likely answer again.
TRANSIENT_CODES = frozenset({ErrorCode.CONNECTION_ERROR, ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.RATE_LIMITED})
#: Status spellings of the hosted service (older docs and other endpoints) -> the contract's.
STATUS_ALIASES = {
    "success": "completed",
    "succeeded": "completed",
    "succeed": "completed",
    "queued": "pending",
    "submitted": "pending",
    "running": "processing",
    "canceled": "cancelled",
}
#: When an error body carries no code of its own.
_CODE_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_INPUT,
    401: ErrorCode.INVALID_API_KEY,
    402: ErrorCode.INSUFFICIENT_CREDITS,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.INVALID_INPUT,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}
_URL_KEYS = ("url", "video_url", "videoUrl", "video", "videos")


class Task(TaskView):
    """A generation task (``TaskView``), normalised across the hosted service's response variants.

    ``creditsRemaining`` is set on the task ``generate`` returns (the balance after the hold).
    """

    creditsRemaining: int | None = None

    @property
    def video_url(self) -> str | None:
        """The result's URL once completed (``result.url``, else ``output.url``), else ``None``."""
        if self.result is not None:
            return self.result.url
        return self.output.url if self.output is not None else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_completed(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_api(cls, data: Any) -> Task:
        """Validate a task from the wire (ours or the hosted service's shapes)."""
        if not isinstance(data, Mapping):
            raise ReelgenError(ErrorCode.INTERNAL_ERROR, "The server's task is not a JSON object.")
        try:
            return cls.model_validate(normalize_task(data))
        except ValidationError as exc:
            raise _unreadable("task", exc) from None


#: ``on_progress(task)``: called by ``wait`` after every poll, the last one included.
ProgressCallback = Callable[[Task], object]


def _unreadable(what: str, exc: ValidationError) -> ReelgenError:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or what
    message = f"The server sent a {what} this SDK cannot read: {where}: {first['msg']}"
    return ReelgenError(ErrorCode.INTERNAL_ERROR, message)


def _first_url(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list | tuple):
        return next((u for u in map(_first_url, value) if u), None)
    if isinstance(value, Mapping):
        return next((u for u in (_first_url(value.get(k)) for k in _URL_KEYS) if u), None)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def normalize_task(data: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's task shape from ours or a hosted-service variant (see the module docstring)."""
    out = dict(data)
    task_id = out.get("id") or out.get("taskId") or out.get("task_id")
    if not task_id:
        raise ReelgenError(ErrorCode.INTERNAL_ERROR, "The server's task has no id.")
    out["id"] = str(task_id)
    status = str(out.get("status") or "").lower()
    out["status"] = STATUS_ALIASES.get(status, status)
    result, output = out.get("result"), out.get("output")
    result_url, output_url = _first_url(result), _first_url(output)
    url = result_url or output_url or _first_url({k: out.get(k) for k in ("video_url", "videoUrl")})
    out["result"] = None
    out["output"] = None
    if url:
        kind = result.get("type") if isinstance(result, Mapping) else None
        out["result"] = {"url": result_url or url, "type": kind if isinstance(kind, str) else "video"}
        fields = output if isinstance(output, Mapping) else {}
        has_audio = fields.get("hasAudio", fields.get("has_audio"))
        out["output"] = {
            "url": output_url or url,
            "duration": _number(fields.get("duration")),
            "format": str(fields.get("format") or "mp4"),
            "hasAudio": has_audio if isinstance(has_audio, bool) else None,
        }
    err = out.get("error")
    out["error"] = None
    if out["status"] in ("failed", "cancelled"):
        fallback = "cancelled" if out["status"] == "cancelled" else "The generation failed."
        if isinstance(err, Mapping):
            code, key, message = err.get("code"), err.get("key"), err.get("message")
        else:
            code, key, message = None, None, err if isinstance(err, str) else None
        out["error"] = {
            "code": str(code or (ErrorCode.CANCELLED if out["status"] == "cancelled" else ErrorCode.GENERATION_FAILED)),
            "key": str(key) if key else None,
            "message": str(message or fallback),
        }
    progress = _number(out.get("progress"))
    out["progress"] = None if progress is None else max(0, min(100, round(progress)))
    return out


def _model_from(data: Any) -> ModelView:
    if not isinstance(data, Mapping):
        raise ReelgenError(ErrorCode.INTERNAL_ERROR, "The server's model entry is not a JSON object.")
    entry = {"inputs": [], "minDuration": 3, "modes": list(data.get("pricing") or ()), **data}
    entry.setdefault("name", entry.get("id"))
    try:
        return ModelView.model_validate(entry)
    except ValidationError as exc:
        raise _unreadable("model", exc) from None


def _sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


def data_uri(path: str | os.PathLike[str]) -> str:
    """A local JPEG/PNG/WEBP file as a ``data:image/...;base64,`` URI (what ``image_urls`` takes)."""
    raw = Path(path).expanduser().read_bytes()
    return f"data:{_sniff(raw)};base64,{base64.b64encode(raw).decode()}"


def _extend_input(task_id: str, prompt: str, duration: int, audio: bool | None) -> dict[str, Any]:
    """The extend model's ``input`` (``audio`` left out when None: the original's)."""
    return {"task_id": task_id, "prompt": prompt, "duration": duration, "audio": audio}


def _generate_body(model: str, fields: Mapping[str, Any], uploaded: Mapping[int, str]) -> dict[str, Any]:
    """The ``/generate`` body; ``uploaded`` holds the ``publicUrl`` of each local path in ``image_urls``."""
    inp = {k: v for k, v in fields.items() if v is not None}
    if "image_urls" in inp:
        inp["image_urls"] = [uploaded.get(i, u) for i, u in enumerate(inp["image_urls"])]
    return {"model": model, "input": to_jsonable_python(inp)}


def _local_images(fields: Mapping[str, Any]) -> dict[int, Path]:
    """The local paths (``os.PathLike``) among ``image_urls``, by position."""
    urls = fields.get("image_urls") or ()
    return {i: Path(u).expanduser() for i, u in enumerate(urls) if isinstance(u, os.PathLike)}


def _presign_body(raw: bytes) -> dict[str, Any]:
    return {"contentType": _sniff(raw), "sizeBytes": len(raw)}


def _put_request(http: httpx.Client | httpx.AsyncClient, slot: PresignView, raw: bytes) -> httpx.Request:
    # the signed URL is the credential: the API key never goes with it (it may be a bucket's)
    request = http.build_request("PUT", slot.uploadUrl, content=raw, headers={"Content-Type": _sniff(raw)})
    request.headers.pop("Authorization", None)
    return request


def _put_done(response: httpx.Response) -> None:
    """A presigned PUT's answer: any 2xx (a bucket answers with no body); else its error."""
    if not response.is_success:
        _unwrap(response)


class TaskPage(BaseModel):
    """One page of ``list``: the tasks, newest first, and the cursor of the next page (None: last)."""

    tasks: list[Task]
    nextCursor: str | None = None


def _page(data: Any) -> TaskPage:
    tasks = data.get("tasks", []) if isinstance(data, Mapping) else data
    cursor = data.get("nextCursor") if isinstance(data, Mapping) else None
    return TaskPage(tasks=[Task.from_api(t) for t in tasks or []], nextCursor=cursor)


def _list_params(
    status: str | None, limit: int | None, cursor: str | None, external_task_id: str | None
) -> dict[str, str]:
    given = {"status": status, "limit": limit, "cursor": cursor, "external_task_id": external_task_id}
    return {k: str(v) for k, v in given.items() if v is not None}


#: ``wait``'s stream: read timeout between events (the server sends a keep-alive every 15 s).
STREAM_READ_TIMEOUT = 45.0


def _stream_timeout(poll: _Poll) -> httpx.Timeout:
    left = None if poll.deadline is None else max(0.1, poll.deadline - poll.clock())
    read = STREAM_READ_TIMEOUT if left is None else min(STREAM_READ_TIMEOUT, left + 0.5)
    return httpx.Timeout(30.0, read=read)


def _is_stream(response: httpx.Response) -> bool:
    """Whether the server answered with an event stream. Anything else (no such route on another
    server, an error, a busy server) makes ``wait`` poll, and polling reports what is wrong."""
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return response.is_success and media == "text/event-stream"


def event_task(event: str, data: str) -> Task | None:
    """The task an SSE ``status``/``progress`` event carries (None for other events)."""
    if event not in ("status", "progress"):
        return None
    try:
        return Task.from_api(json.loads(data))
    except ValueError:
        return None


def _preview_bytes(response: httpx.Response) -> bytes:
    """The image a ``/preview`` answered, or the ``ReelgenError`` its envelope describes."""
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if response.is_success and media.startswith("image/"):
        return response.content
    _unwrap(response)  # raises the server's error
    raise ReelgenError(
        ErrorCode.CONNECTION_ERROR, f"{response.request.url} answered {media or 'no content type'}, not an image"
    )


def _task_id(task: Task | str) -> str:
    return task.id if isinstance(task, TaskView) else str(task)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _connection_error(base_url: str, exc: httpx.TransportError) -> ReelgenError:
    what = "timed out talking to" if isinstance(exc, httpx.TimeoutException) else "cannot reach"
    detail = _one_line(str(exc)) or type(exc).__name__
    return ReelgenError(ErrorCode.CONNECTION_ERROR, f"{what} {base_url}: {detail}")


def _error_from(response: httpx.Response, body: Any) -> ReelgenError:
    status = response.status_code
    fallback: str = _CODE_BY_STATUS.get(status) or (ErrorCode.INTERNAL_ERROR if status >= 500 else f"HTTP_{status}")
    err = body.get("error") if isinstance(body, Mapping) else None
    details = None
    if isinstance(err, Mapping):
        code, message = err.get("code") or fallback, err.get("message")
        details = err.get("details") if isinstance(err.get("details"), list) else None
    elif isinstance(body, Mapping):  # hosted variants: {"error": "text"} or {"code": ..., "message": "text"}
        message = err if isinstance(err, str) else body.get("message")
        code = body["code"] if isinstance(body.get("code"), str) and body["code"] else fallback
    else:
        code, message = fallback, None
    headers = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else None
    text = _one_line(str(message)) if message else f"HTTP {status} {response.reason_phrase}".strip()
    return ReelgenError(str(code), text, status=status, details=details, headers=headers)


def _unwrap(response: httpx.Response) -> Any:
    """The envelope's ``data``, or the ``ReelgenError`` its ``error`` describes."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        if body is None:
            raise ReelgenError(
                ErrorCode.CONNECTION_ERROR,
                f"{response.request.url} answered HTTP {response.status_code} without JSON: "
                "is the base URL a reelgen (or VicSee) API?",
                status=response.status_code,
            )
        if not isinstance(body, Mapping):
            return body
        if body.get("success") is not False:
            return body.get("data", body)
    raise _error_from(response, body)


class _Poll:
    """``wait``'s schedule and verdicts, shared by both clients (no I/O here)."""

    def __init__(self, timeout: float | None, first: float, most: float, clock: Callable[[], float]) -> None:
        if first <= 0 or most <= 0:
            raise ValueError("poll_interval and max_interval must be positive")
        self.delay, self.most, self.clock, self.timeout = first, max(first, most), clock, timeout
        self.deadline = None if timeout is None else clock() + timeout

    def _next_delay(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * BACKOFF_FACTOR, self.most)
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - self.clock()))
        return delay

    def _expired(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def after(self, task: Task, on_progress: ProgressCallback | None) -> float | None:
        """Seconds to sleep before the next poll, or ``None`` when ``task`` completed."""
        if on_progress is not None:
            on_progress(task)
        if task.is_completed:
            return None
        if task.is_terminal:
            err = task.error
            code, message = (err.code, err.message) if err else (ErrorCode.GENERATION_FAILED, "")
            raise ReelgenError(
                ErrorCode.TASK_FAILED,
                _one_line(f"task {task.id} {task.status}: {code}: {message}".rstrip(": ")),
                details=[err.model_dump()] if err else None,
            )
        if self._expired():
            raise ReelgenError(
                ErrorCode.WAIT_TIMEOUT,
                f"task {task.id} is still {task.status} after {self.timeout:g} s; wait again or check it later",
            )
        return self._next_delay()

    def after_error(self, exc: ReelgenError) -> float:
        """Seconds to sleep after a transient error (honouring ``Retry-After``); re-raises others."""
        if exc.code not in TRANSIENT_CODES or self._expired():
            raise exc
        retry_after = _number(exc.headers.get("Retry-After"))
        delay = self._next_delay()
        return max(delay, min(retry_after or 0.0, self.most))


class _Part:
    """An MP4 written next to its destination under a temporary name, renamed into place only when whole."""

    def __init__(self, dest: str | os.PathLike[str], response: httpx.Response) -> None:
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".part", dir=self.dest.parent)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")
        length = response.headers.get("content-length")
        plain = "content-encoding" not in response.headers
        self.expected = int(length) if length and length.isdigit() and plain else None
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.written += len(chunk)

    def commit(self) -> Path:
        self.file.close()
        if self.expected is not None and self.written != self.expected:
            raise ReelgenError(
                ErrorCode.CONNECTION_ERROR, f"download cut short: {self.written} of {self.expected} bytes"
            )
        os.replace(self.tmp, self.dest)
        return self.dest

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _resolve(api_key: str | None, base_url: str | None) -> tuple[str | None, str]:
    key = api_key or os.environ.get("REELGEN_API_KEY") or None
    url = (base_url or os.environ.get("REELGEN_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    return key, url.removesuffix(API)


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": "reelgen-python", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class _Base:
    def __init__(self, api_key: str | None, base_url: str | None) -> None:
        self.api_key, self.base_url = _resolve(api_key, base_url)

    def _file_request(self, http: httpx.Client | httpx.AsyncClient, url: str, params: dict[str, str]) -> httpx.Request:
        # (params=None, not {}: httpx would replace the query of a signed URL with an empty one)
        request = http.build_request("GET", url, params=params or None, headers={"Accept": "*/*"})
        if _origin(str(request.url)) != _origin(self.base_url):
            # A presigned link on another host (a bucket, a CDN) must never receive the API key.
            request.headers.pop("Authorization", None)
        return request


class Client(_Base):
    """A blocking client. Use as a context manager, or call ``close()``.

    ``api_key`` / ``base_url`` default to ``REELGEN_API_KEY`` / ``REELGEN_BASE_URL`` (then
    ``http://127.0.0.1:8000``); for the hosted service pass ``base_url="https://vicsee.com"``.
    ``sleep`` and ``clock`` are injectable for callers that drive time themselves.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(api_key, base_url)
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout, transport=transport
        )
        self._sleep, self._clock = sleep, clock

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return _unwrap(response)

    def generate(self, model: str, /, **input: Any) -> Task:
        """Queue a generation; ``input`` is the request's ``input`` (``prompt=``, ``duration=``, ...).

        ``None`` values are left out; ``image_urls`` may hold local paths (``pathlib.Path``), which are
        uploaded first (``upload``) and sent as their ``publicUrl``. The extensions go the same way:
        ``loras=[{"name": "watercolor", "strength": 0.8}]``, ``camera_control={"type": "dolly_in"}``
        (``models()`` lists what the server offers), ``multi_shot_continuity="continue"`` or
        ``"same_subject"`` with ``multi_shots=True`` (shots that flow on, or keep shot 1's subject),
        ``enhance_prompt=True`` (the completed task's ``enhancedPrompt``, or ``enhancedMultiPrompt`` for
        shots, is what the model was conditioned on).
        """
        uploaded = {i: self.upload(path) for i, path in _local_images(input).items()}
        return Task.from_api(self._call("POST", f"{API}/generate", json=_generate_body(model, input, uploaded)))

    def extend(self, task_id: str, prompt: str, *, duration: int = 5, audio: bool | None = None) -> Task:
        """Continue the completed task ``task_id`` by ``duration`` seconds (the extend model): the
        result is one MP4 of the whole, priced per added second at the original's mode rate.
        ``audio`` defaults to whether the original has sound."""
        return self.generate(VIDEO_EXTEND, **_extend_input(task_id, prompt, duration, audio))

    def get(self, task_id: str) -> Task:
        return Task.from_api(self._call("GET", f"{API}/tasks/{task_id}"))

    def list(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        external_task_id: str | None = None,
    ) -> TaskPage:
        """One page of the caller's tasks, newest first (``cursor``: the previous page's ``nextCursor``);
        ``external_task_id`` finds the task given that id."""
        params = _list_params(status, limit, cursor, external_task_id)
        return _page(self._call("GET", f"{API}/tasks", params=params))

    def cancel(self, task: Task | str) -> Task:
        """Cancel a pending or processing task (its credits are released); ``NOT_CANCELLABLE`` once it ended."""
        return Task.from_api(self._call("POST", f"{API}/tasks/{_task_id(task)}/cancel"))

    def upload(self, path: str | os.PathLike[str]) -> str:
        """Upload a local JPEG/PNG/WEBP image by the presign flow and return its ``publicUrl``
        (usable in ``image_urls``)."""
        raw = Path(path).expanduser().read_bytes()
        slot = PresignView.model_validate(self._call("POST", f"{API}/upload", json=_presign_body(raw)))
        try:
            _put_done(self._http.send(_put_request(self._http, slot, raw)))
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return slot.publicUrl

    def _follow(self, task_id: str, poll: _Poll, on_progress: ProgressCallback | None) -> Task | None:
        """Follow the task's event stream until it completes; None when the stream is not offered
        or breaks first (``wait`` then polls). A failed or cancelled task, or the deadline, raises
        as in ``wait``."""
        url = f"{API}/tasks/{task_id}/events"
        try:
            with connect_sse(self._http, "GET", url, timeout=_stream_timeout(poll)) as source:
                if not _is_stream(source.response):
                    return None
                for event in source.iter_sse():
                    current = event_task(event.event, event.data)
                    if current is not None and poll.after(current, on_progress) is None:
                        return current
        except (httpx.TransportError, SSEError):
            return None
        return None

    def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_progress: ProgressCallback | None = None,
        stream: bool = True,
    ) -> Task:
        """Follow the task until it completes and return it: its event stream (``stream=True``), else
        (or once the stream breaks) polls (first at once, then 1 s, x1.5, <= ``max_interval``).

        Raises ``TASK_FAILED`` for a failed or cancelled task, ``WAIT_TIMEOUT`` after ``timeout``
        seconds (``None``: no limit); network hiccups, 503 and 429 are retried until then.
        """
        poll = _Poll(timeout, poll_interval, max_interval, self._clock)
        if stream:
            done = self._follow(_task_id(task), poll, on_progress)
            if done is not None:
                return done
        while True:
            try:
                current = self.get(_task_id(task))
            except ReelgenError as exc:
                self._sleep(poll.after_error(exc))
                continue
            delay = poll.after(current, on_progress)
            if delay is None:
                return current
            self._sleep(delay)

    def download(self, task: Task | str, path: str | os.PathLike[str], *, proxy: bool = False) -> Path:
        """Save the task's MP4 at ``path`` (atomically) and return it.

        By default the file comes from the signed URL ``/download`` hands out (no key is sent to
        another host); ``proxy=True`` streams it through the API with the key (``?mode=proxy``).
        """
        url = f"{API}/tasks/{_task_id(task)}/download"
        params = {"mode": "proxy"} if proxy else {}
        if not proxy:
            url = DownloadView.model_validate(self._call("GET", url)).url
        request = self._file_request(self._http, url, params)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        try:
            if not response.is_success:
                response.read()
                _unwrap(response)
            part = _Part(path, response)
            try:
                for chunk in response.iter_bytes():
                    part.write(chunk)
                return part.commit()
            except BaseException:
                part.discard()
                raise
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        finally:
            response.close()

    def preview(self, task: Task | str) -> bytes:
        """The latest live preview of a running (or completed) task: a small animated WebP's bytes.
        ``NO_PREVIEW`` before the first one, or once the task ended without a result."""
        try:
            response = self._http.get(f"{API}/tasks/{_task_id(task)}/preview")
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return _preview_bytes(response)

    def credits(self) -> CreditsView:
        """The caller's available and reserved credits."""
        return CreditsView.model_validate(self._call("GET", f"{API}/credits"))

    def models(self) -> builtins.list[ModelView]:
        """The served models with their inputs and prices (needs no key)."""
        return [_model_from(m) for m in self._call("GET", f"{API}/models")]


class AsyncClient(_Base):
    """The asyncio twin of ``Client`` (same methods, awaited). Use ``async with`` or ``aclose()``."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(api_key, base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout, transport=transport
        )
        self._sleep, self._clock = sleep, clock

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return _unwrap(response)

    async def generate(self, model: str, /, **input: Any) -> Task:
        """See ``Client.generate``."""
        uploaded = {i: await self.upload(path) for i, path in _local_images(input).items()}
        body = _generate_body(model, input, uploaded)
        return Task.from_api(await self._call("POST", f"{API}/generate", json=body))

    async def extend(self, task_id: str, prompt: str, *, duration: int = 5, audio: bool | None = None) -> Task:
        """See ``Client.extend``."""
        return await self.generate(VIDEO_EXTEND, **_extend_input(task_id, prompt, duration, audio))

    async def get(self, task_id: str) -> Task:
        return Task.from_api(await self._call("GET", f"{API}/tasks/{task_id}"))

    async def list(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        external_task_id: str | None = None,
    ) -> TaskPage:
        """See ``Client.list``."""
        params = _list_params(status, limit, cursor, external_task_id)
        return _page(await self._call("GET", f"{API}/tasks", params=params))

    async def cancel(self, task: Task | str) -> Task:
        """See ``Client.cancel``."""
        return Task.from_api(await self._call("POST", f"{API}/tasks/{_task_id(task)}/cancel"))

    async def upload(self, path: str | os.PathLike[str]) -> str:
        """See ``Client.upload``."""
        raw = Path(path).expanduser().read_bytes()
        slot = PresignView.model_validate(await self._call("POST", f"{API}/upload", json=_presign_body(raw)))
        try:
            _put_done(await self._http.send(_put_request(self._http, slot, raw)))
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return slot.publicUrl

    async def _follow(self, task_id: str, poll: _Poll, on_progress: ProgressCallback | None) -> Task | None:
        """See ``Client._follow``."""
        url = f"{API}/tasks/{task_id}/events"
        try:
            async with aconnect_sse(self._http, "GET", url, timeout=_stream_timeout(poll)) as source:
                if not _is_stream(source.response):
                    return None
                async for event in source.aiter_sse():
                    current = event_task(event.event, event.data)
                    if current is not None and poll.after(current, on_progress) is None:
                        return current
        except (httpx.TransportError, SSEError):
            return None
        return None

    async def wait(
        self,
        task: Task | str,
        *,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_progress: ProgressCallback | None = None,
        stream: bool = True,
    ) -> Task:
        """See ``Client.wait``."""
        poll = _Poll(timeout, poll_interval, max_interval, self._clock)
        if stream:
            done = await self._follow(_task_id(task), poll, on_progress)
            if done is not None:
                return done
        while True:
            try:
                current = await self.get(_task_id(task))
            except ReelgenError as exc:
                await self._sleep(poll.after_error(exc))
                continue
            delay = poll.after(current, on_progress)
            if delay is None:
                return current
            await self._sleep(delay)

    async def download(self, task: Task | str, path: str | os.PathLike[str], *, proxy: bool = False) -> Path:
        """See ``Client.download``."""
        url = f"{API}/tasks/{_task_id(task)}/download"
        params = {"mode": "proxy"} if proxy else {}
        if not proxy:
            url = DownloadView.model_validate(await self._call("GET", url)).url
        request = self._file_request(self._http, url, params)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        try:
            if not response.is_success:
                await response.aread()
                _unwrap(response)
            part = _Part(path, response)
            try:
                async for chunk in response.aiter_bytes():
                    part.write(chunk)
                return part.commit()
            except BaseException:
                part.discard()
                raise
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        finally:
            await response.aclose()

    async def preview(self, task: Task | str) -> bytes:
        """See ``Client.preview``."""
        try:
            response = await self._http.get(f"{API}/tasks/{_task_id(task)}/preview")
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from None
        return _preview_bytes(response)

    async def credits(self) -> CreditsView:
        return CreditsView.model_validate(await self._call("GET", f"{API}/credits"))

    async def models(self) -> builtins.list[ModelView]:
        return [_model_from(m) for m in await self._call("GET", f"{API}/models")]
