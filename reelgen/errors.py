"""The one error type reelgen raises on purpose, and its stable codes.

Code anywhere below the HTTP layer raises ``ReelgenError(ErrorCode.X, "message")``; the API maps
the code to an HTTP status in exactly one table (``reelgen.api.errors``), and the SDK raises the
same type with the same code when the server answers with an error envelope.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    # auth (401)
    MISSING_AUTH_HEADER = "MISSING_AUTH_HEADER"
    INVALID_AUTH_FORMAT = "INVALID_AUTH_FORMAT"
    INVALID_KEY_FORMAT = "INVALID_KEY_FORMAT"
    INVALID_API_KEY = "INVALID_API_KEY"
    # request (400/402/408/413/422/429)
    INVALID_JSON = "INVALID_JSON"
    MISSING_MODEL = "MISSING_MODEL"
    INVALID_MODEL = "INVALID_MODEL"
    MISSING_PROMPT = "MISSING_PROMPT"
    INVALID_INPUT = "INVALID_INPUT"
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UPLOAD_QUOTA_EXCEEDED = "UPLOAD_QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    # objects (403/404/405/409/416)
    TASK_NOT_FOUND = "TASK_NOT_FOUND"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    NO_RESULT = "NO_RESULT"
    NOT_CANCELLABLE = "NOT_CANCELLABLE"
    INVALID_TOKEN = "INVALID_TOKEN"
    RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"
    DUPLICATE_EXTERNAL_TASK_ID = "DUPLICATE_EXTERNAL_TASK_ID"
    # task failures (stored on the task; also raised by the engine and input fetching)
    GENERATION_FAILED = "GENERATION_FAILED"
    IMAGE_FETCH_FAILED = "IMAGE_FETCH_FAILED"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    INVALID_IMAGE = "INVALID_IMAGE"
    TIMEOUT = "TIMEOUT"
    #: a LoRA the request asked for (``input.loras``, ``camera_control``) could not be loaded
    LORA_FAILED = "LORA_FAILED"
    #: ``input.enhance_prompt``: the prompt enhancer could not be loaded, failed, or wrote nothing
    PROMPT_ENHANCEMENT_FAILED = "PROMPT_ENHANCEMENT_FAILED"
    CANCELLED = "CANCELLED"
    # operator side (CLI, settings, profiles, weights)
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    INVALID_PROFILE = "INVALID_PROFILE"
    WEIGHTS_NOT_FOUND = "WEIGHTS_NOT_FOUND"
    INVALID_SETTINGS = "INVALID_SETTINGS"
    # server side
    NOT_SUPPORTED = "NOT_SUPPORTED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # client side (SDK only: the server never sends these)
    CONNECTION_ERROR = "CONNECTION_ERROR"
    WAIT_TIMEOUT = "WAIT_TIMEOUT"
    TASK_FAILED = "TASK_FAILED"


#: The lower-case ``key`` shown beside a task failure's code (the seed's ``error.key``).
FAILURE_KEYS: dict[ErrorCode, str] = {
    ErrorCode.GENERATION_FAILED: "generic",
    ErrorCode.IMAGE_FETCH_FAILED: "image_fetch_failed",
    ErrorCode.IMAGE_TOO_LARGE: "image_too_large",
    ErrorCode.INVALID_IMAGE: "invalid_image",
    ErrorCode.TIMEOUT: "timeout",
    ErrorCode.LORA_FAILED: "lora_failed",
    ErrorCode.PROMPT_ENHANCEMENT_FAILED: "prompt_enhancement_failed",
    ErrorCode.CANCELLED: "cancelled",
}


class ReelgenError(Exception):
    """An expected failure with a stable ``code`` and a human ``message``.

    ``details`` optionally lists ``{"field": ..., "message": ...}`` items (validation errors);
    ``status`` is the HTTP status when the error came from (or goes to) an HTTP response.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode._value2member_map_ else code
        self.message = message
        self.details = details
        self.status = status
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ReelgenError({str(self.code)!r}, {self.message!r})"
