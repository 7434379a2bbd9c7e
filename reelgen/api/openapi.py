"""The OpenAPI document: FastAPI's generated paths, completed with what the routes really answer.

Routes return plain dicts (one envelope for every route), so FastAPI alone describes every
response as "any object" plus a 422 that we never send. ``document(app)`` rewrites that into the
contract: each operation's success envelope ``{"success": true, "data": <model>}`` around the
model its route declares (``responses=routes.success(Model)``), the error
envelope under every status the route can answer (``ERROR_STATUSES``), the bearer scheme and a
request body that says what ``schemas.parse_generate`` accepts. Schemathesis runs against this
document in CI (``tests/test_contract.py``), so it must stay exact: a status the server sends
but the document lacks, or a body that does not match, fails that run.

An operation that declares no model still gets the error envelope and the generic statuses;
its success body is described as an envelope around any JSON value.

Over 400 lines on purpose: the document is rewritten in one pass over every operation (statuses per
route, envelopes, the request bodies of ``/generate``, uploads and ``/v1/videos``, links), and the
exactness the contract run checks lives in how those rewrites agree; split across modules, each
would have to re-walk the same document and re-learn which route is which.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from reelgen.schemas import (
    CAMERA_MOVES,
    CONTINUITY_MODES,
    EXTERNAL_TASK_ID_PATTERN,
    IMAGE_TO_VIDEO,
    IMAGE_URL_PATTERN,
    MAX_DURATION,
    MAX_EXTENDED_SECONDS,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_LORAS,
    MAX_SEED,
    MAX_STRENGTH,
    MIN_DURATION,
    MIN_STRENGTH,
    TEXT_TO_VIDEO,
    UPLOAD_URL_PREFIX,
    VIDEO_EXTEND,
    AspectRatio,
    Mode,
)

if TYPE_CHECKING:
    from reelgen.profiles import Profile

REF = "#/components/schemas/{model}"
#: the very pattern ``schemas.GenerateInput`` applies (http(s) with a host, data:image/, uploads)
IMAGE_URL = IMAGE_URL_PATTERN
#: what a callback URL must start with (the server also applies the address rules of webhooks)
CALLBACK_URL = "^[hH][tT][tT][pP][sS]?://[^/?#@:\\x00-\\x20]"
#: A prompt: no NUL (PostgreSQL text cannot hold it) and at least one character ``str.strip()`` keeps
#: (``MISSING_PROMPT`` otherwise). Whitespace is spelled out rather than ``\s``, because Python's and
#: ECMA-262's whitespace classes differ (\x1c-\x1f and \x85 against \ufeff).
_WS = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
PROMPT = f"^[^\\x00]*[^\\x00{_WS}][^\\x00]*$"

# the statuses each kind of operation can answer besides its success
_ALWAYS = (400, 413, 429, 503)
_AUTH = (401,)
_TASK = (404,)
ERROR_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    # 404: the extend model's input.task_id names no task of the caller's
    ("post", "/api/v1/generate"): (*_ALWAYS, *_AUTH, *_TASK, 402, 409, 422),
    ("get", "/api/v1/tasks/{task_id}"): (*_ALWAYS, *_AUTH, *_TASK),
    ("get", "/api/v1/tasks/{task_id}/download"): (*_ALWAYS, *_AUTH, *_TASK, 409, 416),
    ("get", "/api/v1/tasks/{task_id}/preview"): (*_ALWAYS, *_AUTH, *_TASK),
    ("get", "/api/v1/credits"): (*_ALWAYS, *_AUTH),
    ("get", "/api/v1/models"): (400, 413, 429),
    ("get", "/healthz"): (400, 413),
    ("get", "/readyz"): (400, 413, 503),
    ("post", "/api/v1/upload"): (*_ALWAYS, *_AUTH),
    # a presigned PUT carries no key: its signature is the credential (403 INVALID_TOKEN)
    ("put", "/api/v1/uploads/{upload_id}"): (400, 403, 413, 503),
    ("get", "/api/v1/uploads/{upload_id}"): (*_ALWAYS, *_AUTH, 404, 409),
    ("post", "/api/v1/tools/{tool}"): (*_ALWAYS, *_AUTH, 501),
}
_DEFAULT_ERRORS = (*_ALWAYS, *_AUTH, *_TASK, 409)

_DESCRIPTIONS = {
    400: "Invalid request (INVALID_JSON, MISSING_MODEL, INVALID_MODEL, MISSING_PROMPT, INVALID_INPUT)",
    401: "Missing or invalid API key (MISSING_AUTH_HEADER, INVALID_AUTH_FORMAT, INVALID_KEY_FORMAT, INVALID_API_KEY)",
    402: "Not enough available credits (INSUFFICIENT_CREDITS); nothing is reserved",
    403: "The signed link is invalid, expired or already used (INVALID_TOKEN)",
    404: "No such task (TASK_NOT_FOUND) or upload (NOT_FOUND) for this key, no live preview to show "
    "(NO_PREVIEW), or no such route (NOT_FOUND)",
    409: (
        "The task (or presigned upload) has no result yet (NO_RESULT) or cannot be cancelled "
        "(NOT_CANCELLABLE); the external_task_id is already used (DUPLICATE_EXTERNAL_TASK_ID)"
    ),
    413: "The request body is over the server's limit (PAYLOAD_TOO_LARGE), or an upload would pass the "
    "account's upload quota (UPLOAD_QUOTA_EXCEEDED)",
    416: "The requested byte range is outside the file (RANGE_NOT_SATISFIABLE)",
    422: "The Idempotency-Key was used with another body (IDEMPOTENCY_KEY_REUSED)",
    429: "Too many requests (RATE_LIMITED); retry after Retry-After seconds",
    501: "Not offered by this server (NOT_SUPPORTED); the message names what it serves",
    503: "The database is busy or unreachable, or the disk is full or read-only (SERVICE_UNAVAILABLE); "
    "retry after Retry-After seconds",
}


#: Operations that may answer with the MP4 itself (``?mode=proxy``), whole or a byte range.
VIDEO: set[tuple[str, str]] = {("get", "/api/v1/tasks/{task_id}/download")}


def error_envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "error"],
        "additionalProperties": False,
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
        },
    }


def _success_schema(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"const": True}, "data": data},
    }


@dataclass(frozen=True)
class Offer:
    """What this server's profile offers to ``input.loras`` and ``input.camera_control``: the
    document states exactly these names, count and moves (None: the generic document)."""

    loras: tuple[str, ...] = ()
    max_loras: int = 0
    camera_moves: tuple[str, ...] = ()
    #: credits per enhanced prompt (``input.enhance_prompt``); None: this server has no enhancer
    enhance_credits: int | None = None

    @classmethod
    def of(cls, profile: Profile) -> Offer:
        names = tuple(sorted(n for n, spec in profile.loras.items() if spec.requestable))
        enhancer = profile.prompt_enhancement
        return cls(
            names,
            min(profile.max_request_loras, MAX_REQUEST_LORAS) if names else 0,
            tuple(profile.camera),
            None if enhancer is None else enhancer.credits,
        )


def _input_schema(model: str, offer: Offer | None = None) -> dict[str, Any]:
    shot = {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "duration"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "pattern": PROMPT},
            "duration": {"type": "integer", "minimum": 1, "maximum": MAX_DURATION},
        },
    }
    props: dict[str, Any] = {
        "prompt": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_PROMPT_CHARS,
            "pattern": PROMPT,
            "description": "What to generate: not blank, no NUL.",
        },
        "duration": {"type": "integer", "minimum": MIN_DURATION, "maximum": MAX_DURATION, "default": 5},
        "mode": {"type": "string", "enum": [m.value for m in Mode], "default": Mode.STANDARD.value},
        "audio": {"type": "boolean", "default": True},
        "multi_shots": {
            "type": "boolean",
            "default": False,
            "description": "true needs multi_prompt, whose shot durations add up to duration.",
        },
        "multi_prompt": {
            "type": ["array", "null"],
            "items": shot,
            "description": "The shots, in order; their durations must add up to duration (else 400 INVALID_INPUT).",
        },
        "multi_shot_continuity": {
            "type": ["string", "null"],
            "enum": [*CONTINUITY_MODES, None],
            "default": "cut",
            "description": (
                "Extension, with multi_shots: true (else 400 INVALID_INPUT, except cut): cut = independent "
                "shots; continue = each shot flows on from the last frames of the one before; same_subject = "
                "later shots are guided by shot 1's subject and still cut. Same price."
            ),
        },
        # Kling's own fields
        "negative_prompt": {
            "type": ["string", "null"],
            "maxLength": MAX_PROMPT_CHARS,
            "pattern": "^[^\\x00]*$",
            "description": 'What to avoid; default the profile\'s, "" for none (guided stages only).',
        },
        "cfg_scale": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "description": "How closely to follow the prompt: 0.5 = the profile's guidance (guided stages only).",
        },
        "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SEED, "description": "Noise seed."},
        "callback_url": {
            "type": ["string", "null"],
            "pattern": CALLBACK_URL,
            "description": "POSTed (signed, Standard Webhooks) when the task ends; public http(s) only.",
        },
        "external_task_id": {
            "type": ["string", "null"],
            "pattern": EXTERNAL_TASK_ID_PATTERN,
            "description": "Your own id of the task, unique per account (409 DUPLICATE_EXTERNAL_TASK_ID).",
        },
    }
    strength = {"type": "number", "minimum": MIN_STRENGTH, "maximum": MAX_STRENGTH}
    lora_name: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 100}
    if offer is not None and offer.loras:
        lora_name = {"enum": list(offer.loras)}
    props["loras"] = {
        "type": ["array", "null"],
        "maxItems": MAX_REQUEST_LORAS if offer is None else offer.max_loras,
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": lora_name,
                "strength": {**strength, "description": "Default: the LoRA's strength in GET /api/v1/models."},
            },
        },
        "description": (
            "Extension: LoRAs this server offers (GET /api/v1/models: loras, maxLoras), each listed once, "
            "applied in every stage; an unknown name, a name listed twice or more than maxLoras is 400 "
            "INVALID_INPUT. Same price."
        ),
    }
    props["camera_control"] = {
        "type": ["object", "null"],
        "additionalProperties": False,
        "required": ["type"],
        "properties": {
            "type": {"enum": list(CAMERA_MOVES)},
            "strength": {**strength, "description": "Default: the camera LoRA's strength."},
        },
        "description": (
            "Extension: a camera move run by the server's camera LoRA for it (GET /api/v1/models: cameraMoves); "
            "a move the server has no LoRA for is 400 INVALID_INPUT. Same price."
        ),
    }
    props["enhance_prompt"] = {
        "type": ["boolean", "null"],
        "default": False,
        "description": (
            "Extension: true has the model's own enhancer rewrite each shot's prompt before it is encoded; the "
            "task shows the result as enhancedPrompt (enhancedMultiPrompt for shots). Priced per enhanced "
            "prompt (GET /api/v1/models: enhancePromptCredits); a server without an enhancer refuses true "
            "(400 INVALID_INPUT)."
        ),
    }
    if offer is not None and offer.enhance_credits is None:
        props["enhance_prompt"] = {"enum": [False, None], "description": "This server has no prompt enhancer."}
    if offer is not None:
        if offer.camera_moves:
            props["camera_control"]["properties"]["type"] = {"enum": list(offer.camera_moves)}
        else:
            props["camera_control"] = {"type": "null", "description": "This server has no camera LoRAs."}
    required = ["prompt"]
    if model == TEXT_TO_VIDEO:
        props["aspect_ratio"] = {"enum": [*(a.value for a in AspectRatio), None], "default": "16:9"}
    else:
        props["image_urls"] = {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {"type": "string", "pattern": IMAGE_URL},
            "description": (
                "1 image (start frame) or 2 (start and end frame): http(s) URLs, data:image/ URIs or the "
                f"{UPLOAD_URL_PREFIX}<id> URLs that POST /api/v1/upload returns."
            ),
        }
        required.append("image_urls")
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": props,
        # multi_shots: true needs shots; otherwise shots (an empty list or null is no shots) and a
        # continuity other than cut are refused
        "if": {"required": ["multi_shots"], "properties": {"multi_shots": {"const": True}}},
        "then": {"required": ["multi_prompt"], "properties": {"multi_prompt": {"type": "array", "minItems": 1}}},
        "else": {
            "properties": {
                "multi_prompt": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]},
                "multi_shot_continuity": {"enum": ["cut", None]},
            }
        },
    }


def generate_request_schema(offer: Offer | None = None) -> dict[str, Any]:
    """What ``POST /api/v1/generate`` accepts, one variant per model (``model`` tells them apart)."""
    variants = []
    for model in (TEXT_TO_VIDEO, IMAGE_TO_VIDEO):
        variants.append(
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["model", "input"],
                "properties": {
                    "model": {"const": model},
                    "input": _input_schema(model, offer),
                    "callback_url": {
                        "type": ["string", "null"],
                        "pattern": CALLBACK_URL,
                        "description": "As input.callback_url (give it in one place, or the same in both).",
                    },
                },
            }
        )
    variants.append(_extend_request_schema())
    return {"title": "GenerateRequest", "oneOf": variants}


def _extend_request_schema() -> dict[str, Any]:
    """The extend model's body (``schemas.ExtendInput``; the rules on its original: ``service.extend``)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "input"],
        "description": (
            "Extension: continue a completed task of yours by duration seconds; the result is one MP4 of the "
            "whole (original + extension). Priced per added second at the original's mode rate. An unknown "
            "task_id or another account's task is 404 TASK_NOT_FOUND; a task that is not completed, whose "
            f"result was deleted or expired, or a total over {MAX_EXTENDED_SECONDS} s is 400 INVALID_INPUT."
        ),
        "properties": {
            "model": {"const": VIDEO_EXTEND},
            "input": {
                "type": "object",
                "additionalProperties": False,
                "required": ["task_id", "prompt"],
                "properties": {
                    "task_id": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "description": "The completed task to continue (an extension may be extended too).",
                    },
                    "prompt": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_PROMPT_CHARS,
                        "pattern": PROMPT,
                        "description": "What happens next: not blank, no NUL.",
                    },
                    "duration": {
                        "type": "integer",
                        "minimum": MIN_DURATION,
                        "maximum": MAX_DURATION,
                        "default": 5,
                        "description": "Seconds to add.",
                    },
                    "audio": {
                        "type": ["boolean", "null"],
                        "description": "Default: whether the original has sound; false drops the sound.",
                    },
                    "mode": {
                        "type": ["string", "null"],
                        "enum": [*(m.value for m in Mode), None],
                        "description": "The original's mode (inherited; another mode is 400 INVALID_INPUT).",
                    },
                },
            },
            "callback_url": {"type": ["string", "null"], "pattern": CALLBACK_URL},
        },
    }


def _model_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode="serialization")
    components.update(schema.pop("$defs", {}))
    components[model.__name__.lstrip("_")] = schema
    return {"$ref": REF.format(model=model.__name__.lstrip("_"))}


def declared_models(routers: Sequence[APIRouter]) -> dict[tuple[str, str], Any]:
    """(method, path) -> the model of ``data`` each route declares (``routes.success``)."""
    found: dict[tuple[str, str], Any] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                model = route.responses.get(200, {}).get("model")
                if model is not None:
                    found.update({(method.lower(), route.path): model for method in route.methods or ()})
    return found


def _responses(
    key: tuple[str, str], declared: dict[str, Any], wanted: Any, components: dict[str, Any]
) -> dict[str, Any]:
    """The operation's responses: its success envelope (a route that declares only another media
    type, such as Server-Sent Events, keeps that) and the error envelope under each status."""
    declared_ok = declared.get("200", {})
    if "content" in declared_ok and "application/json" not in declared_ok["content"]:
        return {"200": declared_ok, **_errors(key)}
    if get_origin(wanted) is list:
        data: dict[str, Any] = {"type": "array", "items": _model_ref(get_args(wanted)[0], components)}
    elif get_origin(wanted) in (Union, UnionType):
        data = {"anyOf": [_model_ref(m, components) for m in get_args(wanted)]}
    elif wanted is not None:
        data = _model_ref(wanted, components)
    else:
        data = {}
    ok: dict[str, Any] = {"application/json": {"schema": _success_schema(data)}}
    responses: dict[str, Any] = {}
    if key in VIDEO:
        video = {"schema": {"type": "string", "format": "binary"}}
        ok["video/mp4"] = video
        responses["206"] = {"description": "Part of the MP4 (mode=proxy, Range)", "content": {"video/mp4": video}}
    responses["200"] = {"description": "Success", "content": ok}
    responses.update(_errors(key))
    return dict(sorted(responses.items()))


def _errors(key: tuple[str, str]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorEnvelope")}}}
    for status in sorted(ERROR_STATUSES.get(key, _DEFAULT_ERRORS)):
        entry: dict[str, Any] = {"description": _DESCRIPTIONS.get(status, "Error"), "content": error}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        responses[str(status)] = entry
    return dict(sorted(responses.items()))


def document(
    app: FastAPI,
    routers: Sequence[APIRouter] = (),
    *,
    max_upload_bytes: int | None = None,
    offer: Offer | None = None,
) -> dict[str, Any]:
    """The app's OpenAPI document (built once and cached on the app); ``routers`` hold the routes
    whose declared success models (``routes.success``) the envelopes are built around;
    ``max_upload_bytes`` is the largest ``sizeBytes`` a presigned upload may declare (a setting)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorEnvelope"] = error_envelope_schema()
    components["GenerateRequest"] = generate_request_schema(offer)
    paths = schema.get("paths", {})
    models = declared_models(routers)
    for path, item in paths.items():
        for method, op in item.items():
            key = (method, path)
            if path.startswith(OWN_RESPONSES):
                _keep_own(op)
                continue
            op["responses"] = _responses(key, op.get("responses", {}), models.get(key), components)
    _link_task_routes(paths)
    _link_video_routes(paths)
    if max_upload_bytes is not None:
        _set_upload_limit(paths, max_upload_bytes)
    app.openapi_schema = copy.deepcopy(schema)
    return app.openapi_schema


#: Paths whose routes declare every response themselves (``/v1/videos``: OpenAI's shapes, not the envelope).
OWN_RESPONSES = ("/v1/videos",)


def _keep_own(op: dict[str, Any]) -> None:
    """Drop the 422 FastAPI adds for parameter validation (those routes answer 400 instead)."""
    responses = op.get("responses", {})
    generated = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if generated.get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]


def _set_upload_limit(paths: dict[str, Any], limit: int) -> None:
    """State the server's upload limit on the presign body (copied: the route's schema is shared)."""
    content = paths.get("/api/v1/upload", {}).get("post", {}).get("requestBody", {}).get("content", {})
    presign = content.get("application/json", {}).get("schema")
    if presign is not None and "sizeBytes" in presign.get("properties", {}):
        size = {**presign["properties"]["sizeBytes"], "maximum": limit}
        content["application/json"] = {
            "schema": {**presign, "properties": {**presign["properties"], "sizeBytes": size}}
        }


#: (method, path) of the operation creating a task -> the operations that take its id as ``task_id``
TASK_CREATORS = (("post", "/api/v1/generate"),)


def _link_task_routes(paths: dict[str, Any]) -> None:
    """OpenAPI links from each task-creating response to every operation taking ``{task_id}``,
    so clients (and schemathesis' stateful phase) know where a new task's id goes."""
    takers = {
        f"{method}{path}".replace("/", "_").replace("{", "").replace("}", ""): op["operationId"]
        for path, item in paths.items()
        if "{task_id}" in path
        for method, op in item.items()
        if "operationId" in op
    }
    for method, path in TASK_CREATORS:
        ok = paths.get(path, {}).get(method, {}).get("responses", {}).get("200")
        if ok is not None:
            ok["links"] = {
                name: {"operationId": op_id, "parameters": {"task_id": "$response.body#/data/id"}}
                for name, op_id in sorted(takers.items())
            }


def _link_video_routes(paths: dict[str, Any]) -> None:
    """The same for ``POST /v1/videos``: its ``id`` goes to every operation taking ``{video_id}``."""
    ok = paths.get("/v1/videos", {}).get("post", {}).get("responses", {}).get("200")
    if ok is None:
        return
    ok["links"] = {
        f"{method}{path}".replace("/", "_").replace("{", "").replace("}", ""): {
            "operationId": op["operationId"],
            "parameters": {"video_id": "$response.body#/id"},
        }
        for path, item in sorted(paths.items())
        if "{video_id}" in path
        for method, op in sorted(item.items())
        if "operationId" in op
    }
