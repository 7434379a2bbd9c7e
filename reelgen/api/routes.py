"""Routes: parse, call one service function, render. No SQL, pricing or HTTPException here."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from reelgen import service
from reelgen.api.auth import CurrentAccount
from reelgen.api.body import loads as load_json
from reelgen.api.head import is_head
from reelgen.api.streaming import mp4_response
from reelgen.schemas import CreditsView, DownloadView, GenerateAccepted, ModelView, TaskView

router = APIRouter()


class Health(BaseModel):
    status: str


class WorkerCounts(BaseModel):
    """Live workers of the served profile: ``loading`` (loading weights, warming up) and ``ready``."""

    loading: int
    ready: int


class Ready(BaseModel):
    status: str
    profile: str
    randomWeights: bool
    workers: WorkerCounts


def success(model: Any) -> dict[int | str, dict[str, Any]]:
    """A route's declaration of the model of ``data`` in its success envelope ``{"success": true,
    "data": ...}``; ``api/openapi.py`` builds the documented envelope from it. Documentation only:
    the route still returns its dict (FastAPI does not re-validate it)."""
    return {200: {"model": model}}


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "data": data}


def ctx_of(request: Request) -> service.Context:
    ctx: service.Context = request.app.state.ctx
    return ctx


def base_url(request: Request) -> str:
    return str(request.base_url)


def _mp4(request: Request, result: service.ResultFile) -> Response:
    return mp4_response(result, request.headers.get("range"), head=is_head(request))


GENERATE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}},
}


@router.post(
    "/api/v1/generate",
    tags=["generation"],
    openapi_extra={"requestBody": GENERATE_BODY},
    responses=success(GenerateAccepted),
)
async def generate(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Reserve the price and queue a generation task.

    One rule the request schema cannot state: with ``multi_shots`` true, the ``multi_prompt`` shot
    durations must add up to ``duration``; a body breaking it is answered 400 ``INVALID_INPUT``.
    """
    body = load_json(await request.body())
    idem = request.headers.get("idempotency-key")
    submit = partial(service.submit, idempotency_key=idem, base_url=base_url(request))
    return ok(await run_in_threadpool(submit, ctx_of(request), account, body))


@router.get("/api/v1/tasks/{task_id}", tags=["tasks"], responses=success(TaskView))
def get_task(task_id: str, request: Request, account: CurrentAccount) -> dict[str, Any]:
    """A task's status, progress and, once completed, its result."""
    return ok(service.get_task(ctx_of(request), account, task_id, base_url(request)))


@router.get("/api/v1/tasks/{task_id}/download", tags=["tasks"], response_model=None, responses=success(DownloadView))
def download(
    task_id: str,
    request: Request,
    account: CurrentAccount,
    mode: Literal["url", "proxy"] = Query("url", description="proxy streams the MP4 itself (HTTP Range)"),
) -> dict[str, Any] | Response:
    """A signed, expiring URL of the MP4; or the MP4 itself with ``mode=proxy``."""
    ctx = ctx_of(request)
    if mode == "proxy":
        return _mp4(request, service.result_for_owner(ctx, account, task_id))
    return ok(service.download(ctx, account, task_id, base_url(request)))


@router.get("/api/v1/files/{task_id}.mp4", tags=["tasks"], include_in_schema=False)
def signed_file(task_id: str, request: Request, expires: str | None = None, token: str | None = None) -> Response:
    """The MP4 behind a signed URL (no key needed until it expires)."""
    return _mp4(request, service.result_for_token(ctx_of(request), task_id, expires, token))


@router.get("/api/v1/credits", tags=["account"], responses=success(CreditsView))
def credits(request: Request, account: CurrentAccount) -> dict[str, Any]:
    """Available credits and credits held by pending/processing tasks."""
    return ok(service.credits(ctx_of(request), account))


@router.get("/api/v1/models", tags=["models"], responses=success(list[ModelView]))
def models(
    request: Request,
    type: Literal["video", "image", "music"] | None = Query(None, description="video (all), image or music (none)"),
) -> dict[str, Any]:
    """The served models with their inputs and per-second prices (no auth); ``type`` filters them."""
    return ok(service.models(ctx_of(request), type))


@router.get("/healthz", tags=["health"], responses=success(Health))
def healthz() -> dict[str, Any]:
    """Liveness: the process answers."""
    return ok({"status": "ok"})


@router.get("/readyz", tags=["health"], response_model=None, responses=success(Ready))
def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Readiness: the database answers (503 otherwise)."""
    return ok(service.ready(ctx_of(request)))
