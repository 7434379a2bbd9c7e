"""The catalogue and health: the served models with their prices, readiness, and the metrics page."""

from __future__ import annotations

import hmac
from typing import Any

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import (
    IMAGE_TO_VIDEO,
    MAX_DURATION,
    MAX_EXTENDED_SECONDS,
    MIN_DURATION,
    MODEL_IDS,
    TEXT_TO_VIDEO,
    VIDEO_EXTEND,
    AspectRatio,
    Mode,
)
from reelgen.service.context import Context
from reelgen.storage.base import room_to_write

__all__ = ["MODEL_INPUTS", "MODEL_NAMES", "MODEL_TYPES", "TOOLS", "metrics", "models", "ready", "tool"]

#: The model types VicSee's catalogue knows; this server serves only ``video`` models.
MODEL_TYPES = ("video", "image", "music")
#: VicSee's tools (``POST /api/v1/tools/{name}``), none of which this server runs.
TOOLS = ("upscale-image", "upscale-video")

MODEL_NAMES = {
    TEXT_TO_VIDEO: "Kling 3.0 Text to Video",
    IMAGE_TO_VIDEO: "Kling 3.0 Image to Video",
    VIDEO_EXTEND: "Kling 3.0 Video Extend",
}
MODEL_INPUTS = {
    TEXT_TO_VIDEO: ["prompt", "duration", "mode", "audio", "aspect_ratio", "multi_shots", "multi_prompt"],
    IMAGE_TO_VIDEO: ["prompt", "image_urls", "duration", "mode", "audio", "multi_shots", "multi_prompt"],
    VIDEO_EXTEND: ["task_id", "prompt", "duration", "audio"],
}
#: extensions both models take (listed in ``inputs`` when the profile offers them)
LORA_INPUT, CAMERA_INPUT, ENHANCE_INPUT = "loras", "camera_control", "enhance_prompt"
#: Kling's own optional fields, taken by both models.
KLING_INPUTS = ["negative_prompt", "cfg_scale", "seed", "callback_url", "external_task_id"]
#: extensions both models always take
ALWAYS_EXTENSIONS = ["multi_shot_continuity"]


def models(ctx: Context, type: str | None = None) -> list[dict[str, Any]]:
    """The served models (``type``: only models of that type; ``video`` is all of them, ``image``
    and ``music`` none). An unknown type is ``INVALID_INPUT`` naming the known ones."""
    if type is not None and type not in MODEL_TYPES:
        message = f"must be one of {', '.join(MODEL_TYPES)}"
        raise ReelgenError(
            ErrorCode.INVALID_INPUT, f"Invalid type: {message}", details=[{"field": "query.type", "message": message}]
        )
    if type not in (None, "video"):
        return []
    p = ctx.profile
    pricing_table = {
        m.value: {"audio": p.rate(m, True), "noAudio": p.rate(m, False)} for m in (Mode.STANDARD, Mode.PROFESSIONAL)
    }
    offered = [
        {"name": spec.name, "defaultStrength": spec.strength, "triggerWords": list(spec.trigger_words)}
        for spec in p.loras.values()
        if spec.requestable
    ]
    enhancer = p.prompt_enhancement
    extensions = (
        ([ENHANCE_INPUT] if enhancer is not None else [])
        + ([LORA_INPUT] if offered and p.max_request_loras else [])
        + ([CAMERA_INPUT] if p.camera else [])
    )
    return [
        {
            "id": model_id,
            "name": MODEL_NAMES[model_id],
            "type": "video",
            "inputs": MODEL_INPUTS[model_id] + KLING_INPUTS + ALWAYS_EXTENSIONS + extensions,
            "aspectRatios": [a.value for a in AspectRatio] if model_id == TEXT_TO_VIDEO else None,
            "modes": [m.value for m in Mode],
            "minDuration": max(MIN_DURATION, p.min_duration),
            "maxDuration": min(MAX_DURATION, p.max_duration),
            "pricing": pricing_table,
            "profile": p.name,
            "loras": offered,
            "maxLoras": p.max_request_loras if offered else 0,
            "cameraMoves": list(p.camera),
            "enhancePromptCredits": None if enhancer is None else enhancer.credits,
        }
        for model_id in MODEL_IDS
    ] + [
        {
            "id": VIDEO_EXTEND,
            "name": MODEL_NAMES[VIDEO_EXTEND],
            "type": "video",
            "inputs": MODEL_INPUTS[VIDEO_EXTEND] + ["callback_url"],
            "aspectRatios": None,
            "modes": [m.value for m in Mode],
            "minDuration": max(MIN_DURATION, p.min_duration),
            "maxDuration": min(MAX_DURATION, p.max_duration),
            # per added second, at the original task's mode (and this request's audio)
            "pricing": pricing_table,
            "profile": p.name,
            "loras": [],
            "maxLoras": 0,
            "cameraMoves": [],
            "enhancePromptCredits": None,  # an extension's prompt is not enhanced
            "extends": {"inheritsMode": True, "maxTotalSeconds": MAX_EXTENDED_SECONDS},
        }
    ]


def tool(ctx: Context, name: str) -> dict[str, Any]:
    """VicSee's tools: this server runs none of them (``NOT_SUPPORTED``, naming what it serves)."""
    served = ", ".join(MODEL_IDS)
    raise ReelgenError(
        ErrorCode.NOT_SUPPORTED,
        f"The {name} tool is not offered by this server; it serves video generation only ({served}).",
    )


def metrics(ctx: Context, token: str | None, local_workers: int | None) -> bytes:
    """The Prometheus page; with ``REELGEN_METRICS_TOKEN`` set, ``token`` (the request's bearer
    credential, parsed by the HTTP layer) must equal it."""
    from reelgen import metrics as prometheus

    expected = ctx.settings.metrics_token
    if expected and not hmac.compare_digest((token or "").encode(), expected.encode()):
        raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid metrics token.")
    return prometheus.render(ctx.db, ctx.clock(), local_workers)


def ready(ctx: Context) -> dict[str, Any]:
    """Readiness: the database answers and has not refused a write lately (disk full, read-only),
    and the storage's scratch directory takes a file (raises SERVICE_UNAVAILABLE otherwise).
    ``workers`` counts the live workers of this profile, wherever they run: ``loading`` ones are
    still loading weights or warming up (compiling) and claim nothing yet; ``ready`` ones claim tasks."""
    import os
    from datetime import timedelta

    from reelgen.store import workers
    from reelgen.store.db import UNWRITABLE_MESSAGE, UNWRITABLE_RETRY_SECONDS

    stale = timedelta(seconds=ctx.settings.lease_seconds)
    counts = ctx.db.run(lambda conn: workers.count(conn, profile=ctx.profile.name, now=ctx.clock(), stale_after=stale))
    if ctx.db.refused_write_recently():
        raise ReelgenError(
            ErrorCode.SERVICE_UNAVAILABLE, UNWRITABLE_MESSAGE, headers={"Retry-After": str(UNWRITABLE_RETRY_SECONDS)}
        )
    with room_to_write():
        probe = ctx.storage.temp_path(f"ready-{os.getpid()}")
        try:
            probe.write_bytes(b"ready")
        finally:
            probe.unlink(missing_ok=True)
    return {"status": "ready", "profile": ctx.profile.name, "randomWeights": ctx.profile.is_tiny, "workers": counts}
