"""The catalogue and health: the served models with their prices, readiness, and the metrics page."""

from __future__ import annotations

import hmac
from typing import Any

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import IMAGE_TO_VIDEO, MAX_DURATION, MIN_DURATION, MODEL_IDS, TEXT_TO_VIDEO, AspectRatio, Mode
from reelgen.service.context import Context

__all__ = ["MODEL_INPUTS", "MODEL_NAMES", "metrics", "models", "ready"]

MODEL_NAMES = {
    TEXT_TO_VIDEO: "Kling 3.0 Text to Video",
    IMAGE_TO_VIDEO: "Kling 3.0 Image to Video",
}
MODEL_INPUTS = {
    TEXT_TO_VIDEO: ["prompt", "duration", "mode", "audio", "aspect_ratio", "multi_shots", "multi_prompt"],
    IMAGE_TO_VIDEO: ["prompt", "image_urls", "duration", "mode", "audio", "multi_shots", "multi_prompt"],
}
#: extensions both models take (listed in ``inputs`` when the profile offers them)
LORA_INPUT, CAMERA_INPUT = "loras", "camera_control"


def models(ctx: Context) -> list[dict[str, Any]]:
    p = ctx.profile
    pricing_table = {
        m.value: {"audio": p.rate(m, True), "noAudio": p.rate(m, False)} for m in (Mode.STANDARD, Mode.PROFESSIONAL)
    }
    offered = [
        {"name": spec.name, "defaultStrength": spec.strength, "triggerWords": list(spec.trigger_words)}
        for spec in p.loras.values()
        if spec.requestable
    ]
    extensions = ([LORA_INPUT] if offered and p.max_request_loras else []) + ([CAMERA_INPUT] if p.camera else [])
    return [
        {
            "id": model_id,
            "name": MODEL_NAMES[model_id],
            "type": "video",
            "inputs": MODEL_INPUTS[model_id] + extensions,
            "aspectRatios": [a.value for a in AspectRatio] if model_id == TEXT_TO_VIDEO else None,
            "modes": [m.value for m in Mode],
            "minDuration": max(MIN_DURATION, p.min_duration),
            "maxDuration": min(MAX_DURATION, p.max_duration),
            "pricing": pricing_table,
            "profile": p.name,
            "loras": offered,
            "maxLoras": p.max_request_loras if offered else 0,
            "cameraMoves": list(p.camera),
        }
        for model_id in MODEL_IDS
    ]


def metrics(ctx: Context, token: str | None, local_workers: int | None) -> bytes:
    """The Prometheus page; with ``REELGEN_METRICS_TOKEN`` set, ``token`` (the request's bearer
    credential, parsed by the HTTP layer) must equal it."""
    from reelgen import metrics as prometheus

    expected = ctx.settings.metrics_token
    if expected and not hmac.compare_digest((token or "").encode(), expected.encode()):
        raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid metrics token.")
    return prometheus.render(ctx.db, ctx.clock(), local_workers)


def ready(ctx: Context) -> dict[str, Any]:
    """Readiness: the database answers (raises SERVICE_UNAVAILABLE otherwise). ``workers`` counts the
    live workers of this profile, wherever they run: ``loading`` ones are still loading weights or
    warming up (compiling) and claim nothing yet; ``ready`` ones claim tasks."""
    from datetime import timedelta

    from reelgen.store import workers

    stale = timedelta(seconds=ctx.settings.lease_seconds)
    counts = ctx.db.run(lambda conn: workers.count(conn, profile=ctx.profile.name, now=ctx.clock(), stale_after=stale))
    return {"status": "ready", "profile": ctx.profile.name, "randomWeights": ctx.profile.is_tiny, "workers": counts}
