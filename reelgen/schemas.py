"""Wire models of the HTTP API, shared by the server and the SDK (pydantic only: no heavy imports).

``parse_request`` turns an untrusted ``/generate`` body into a ``GenerateRequest`` (``parse_generate``)
or, for the extend model, an ``ExtendRequest`` (``parse_extend``), or raises a ``ReelgenError`` with
the contract's code (``MISSING_MODEL``, ``INVALID_MODEL``, ``MISSING_PROMPT``, ``INVALID_INPUT`` with
``details``).

Why one module over 400 lines: every wire model (requests, their extensions, responses) lives here
so the server, the SDK and the OpenAPI document import one definition of each; splitting it would
only scatter them.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reelgen.errors import ErrorCode, ReelgenError

TEXT_TO_VIDEO = "kling-3-0-text-to-video"
IMAGE_TO_VIDEO = "kling-3-0-image-to-video"
#: extension: continue a completed task of the same account (``ExtendInput``)
VIDEO_EXTEND = "kling-3-0-video-extend"
MODEL_IDS = (TEXT_TO_VIDEO, IMAGE_TO_VIDEO)
#: every model ``/generate`` accepts: the two Kling models and the extend model
ALL_MODEL_IDS = (*MODEL_IDS, VIDEO_EXTEND)
#: the longest video an extension may make, original included (a chain of extends too): the worker
#: decodes and re-encodes the whole file, and an account's chain must stay a bounded amount of work
MAX_EXTENDED_SECONDS = 120
MAX_PROMPT_CHARS = 2500
MIN_DURATION, MAX_DURATION = 3, 15
#: The most credits any amount may be: a grant, a price, a balance or an account's lifetime total.
#: Far below 2**63 (every database column and sum stays an exact integer) and below 2**53 (a
#: float, JSON's number in many clients, still holds it exactly).
MAX_CREDITS = 10**15
#: Kling's own fields: ``seed`` range, and what an ``external_task_id`` may be (printable ASCII, no space)
MAX_SEED = 2**31 - 1
EXTERNAL_TASK_ID_PATTERN = "^[!-~]{1,128}$"
#: ``image_urls`` entries naming an image uploaded to this server (``POST /api/v1/upload``):
#: ``reelgen-upload://<32 hex digits>``. Defined here only; the server and the SDK import it.
UPLOAD_URL_PREFIX = "reelgen-upload://"
#: What an ``image_urls`` entry must start with: an http(s) URL (the scheme in any case) whose
#: authority starts with a host character (``HTTP://``, ``http:///x`` and ``http://:80`` have no host),
#: a ``data:image/`` URI, or an upload URL. The parser applies this very pattern and
#: the OpenAPI document publishes it (Python and ECMA-262 read it alike), so the two cannot disagree.
IMAGE_URL_PATTERN = (
    "^(?:[hH][tT][tT][pP][sS]?://[^/?#@:\\x00-\\x20]|[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/|" + UPLOAD_URL_PREFIX + ")"
)


class Mode(StrEnum):
    STANDARD = "standard"
    PROFESSIONAL = "professional"


class AspectRatio(StrEnum):
    WIDE = "16:9"
    TALL = "9:16"
    SQUARE = "1:1"

    @property
    def ratio(self) -> float:
        w, h = self.value.split(":")
        return int(w) / int(h)


def _whole_number(value: Any) -> Any:
    """Accept 5 and 5.0; refuse 5.5, True and "5" (the contract's integer rule)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number of seconds")
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


def _storable(value: str) -> str:
    """Refuse NUL: PostgreSQL text cannot hold it (and no prompt needs it)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Prompt = Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS), AfterValidator(_storable)]


def _real_number(value: Any) -> Any:
    """Accept 0, 0.5 and 1; refuse True and "0.5" (a number, as the contract's other numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return float(value)


UnitInterval = Annotated[float, BeforeValidator(_real_number), Field(ge=0, le=1, allow_inf_nan=False)]


_IMAGE_URL = re.compile(IMAGE_URL_PATTERN)

#: the most ``input.loras`` any request may list (a profile's ``max_request_loras`` may allow fewer)
MAX_REQUEST_LORAS = 16
#: LoRA and camera strengths a request may give
MIN_STRENGTH, MAX_STRENGTH = -2.0, 2.0
#: ``camera_control.type``: the seven moves of the official LTX-2 camera LoRAs
CameraMove = Literal["dolly_in", "dolly_out", "dolly_left", "dolly_right", "jib_up", "jib_down", "static"]
CAMERA_MOVES: tuple[str, ...] = get_args(CameraMove)
#: ``multi_shot_continuity``: how the shots of a multi-shot video relate (``cut``: independent shots)
Continuity = Literal["cut", "continue", "same_subject"]
CONTINUITY_MODES: tuple[str, ...] = get_args(Continuity)
Strength = Annotated[
    float, BeforeValidator(_real_number), Field(ge=MIN_STRENGTH, le=MAX_STRENGTH, allow_inf_nan=False, strict=False)
]


class LoraRequest(BaseModel):
    """One of the profile's requestable LoRAs by name, at ``strength`` (default: the profile's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(min_length=1, max_length=100)
    strength: Strength | None = None


class CameraControl(BaseModel):
    """A camera move, run by the profile's camera LoRA for it at ``strength`` (default: the LoRA's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: CameraMove
    strength: Strength | None = None


class Shot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt = Field(min_length=1)
    #: no shot is longer than the longest video (the shots must also add up to ``duration``)
    duration: WholeNumber = Field(ge=1, le=MAX_DURATION)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


class GenerateInput(BaseModel):
    """The ``input`` of ``POST /api/v1/generate`` (both models; the model decides which fields apply)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Prompt
    duration: WholeNumber = Field(default=5, ge=MIN_DURATION, le=MAX_DURATION)
    mode: Mode = Mode.STANDARD
    audio: StrictBool = True
    aspect_ratio: AspectRatio | None = None
    image_urls: tuple[StrictStr, ...] | None = None
    multi_shots: StrictBool = False
    multi_prompt: tuple[Shot, ...] | None = None
    # Kling's own fields (both models): what to avoid, how strictly to follow the prompt, the noise
    # seed, a per-task webhook and the caller's own id of the task (unique per account)
    negative_prompt: Prompt | None = None
    cfg_scale: UnitInterval | None = None
    seed: WholeNumber | None = Field(default=None, ge=0, le=MAX_SEED)
    callback_url: StrictStr | None = None
    external_task_id: Annotated[StrictStr, Field(pattern=EXTERNAL_TASK_ID_PATTERN)] | None = None
    #: extension: the profile's requestable LoRAs by name (checked against the profile at submit)
    loras: tuple[LoraRequest, ...] | None = Field(default=None, max_length=MAX_REQUEST_LORAS)
    #: extension: a camera move (the profile's camera LoRAs)
    camera_control: CameraControl | None = None
    #: extension: later shots continue the previous one's picture, or keep shot 1's subject (None = "cut")
    multi_shot_continuity: Continuity | None = None
    #: extension: the model's own enhancer rewrites each shot's prompt before it is encoded (the
    #: profile's ``prompt_enhancement``; priced per enhanced prompt). Absent means false.
    enhance_prompt: StrictBool | None = None

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, v: tuple[LoraRequest, ...] | None) -> tuple[LoraRequest, ...] | None:
        names = [item.name for item in v or ()]
        if len(set(names)) != len(names):
            raise ValueError("each LoRA may be listed once")
        return v

    @field_validator("multi_shot_continuity")
    @classmethod
    def _continuity_needs_shots(cls, v: str | None, info: ValidationInfo) -> str | None:
        # refused rather than ignored: one generation has no later shot to continue (multi_shots is
        # declared first, so it is validated by now; absent from info.data when it was invalid itself)
        if v not in (None, "cut") and info.data.get("multi_shots") is False:
            raise ValueError(f"{v!r} needs multi_shots: true (one generation has no later shot)")
        return v

    @field_validator("image_urls")
    @classmethod
    def _image_urls(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not 1 <= len(v) <= 2:
            raise ValueError("give 1 image (start frame) or 2 images (start and end frame)")
        for url in v:
            if not _IMAGE_URL.match(url):
                raise ValueError(
                    "each image must be an http(s) URL with a host, a data:image/...;base64, URI or a "
                    f"{UPLOAD_URL_PREFIX} URL"
                )
            if any("\ud800" <= c <= "\udfff" for c in url):  # stored, then echoed: UTF-8 must encode it
                raise ValueError("each image URL must be valid text (no lone surrogates)")
        return v

    @model_validator(mode="after")
    def _shots(self) -> GenerateInput:
        if self.multi_shots:
            if not self.multi_prompt:
                raise ValueError("multi_prompt is required and non-empty when multi_shots is true")
            total = sum(s.duration for s in self.multi_prompt)
            if total != self.duration:
                raise ValueError(f"shot durations add up to {total} s but duration is {self.duration} s")
        elif self.multi_prompt:
            raise ValueError("multi_prompt is only allowed when multi_shots is true")
        return self


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    input: GenerateInput
    #: extension: POSTed (signed, Standard Webhooks) when the task ends; same address rules as image URLs
    callback_url: str | None = None

    @property
    def is_image_to_video(self) -> bool:
        return self.model == IMAGE_TO_VIDEO


class ExtendInput(BaseModel):
    """The ``input`` of the extend model: continue the completed task ``task_id`` by ``duration``
    seconds described by ``prompt``. ``audio`` defaults to whether the original has sound; ``mode``
    is the original's (given, it must equal it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: StrictStr = Field(min_length=1, max_length=64)
    prompt: Prompt
    duration: WholeNumber = Field(default=5, ge=MIN_DURATION, le=MAX_DURATION)
    audio: StrictBool | None = None
    mode: Mode | None = None


class ExtendRequest(BaseModel):
    """A ``/generate`` body for ``VIDEO_EXTEND``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = VIDEO_EXTEND
    input: ExtendInput
    callback_url: str | None = None


def _loc(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"])


StoredModel = TypeVar("StoredModel", bound=BaseModel)


def stored_input(model: type[StoredModel], data: Any) -> StoredModel:
    """A task's stored ``input`` read back as ``model`` (the worker's side): ``INVALID_INPUT`` naming
    the fields when it no longer validates (a task stored by another version)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "input" for e in exc.errors())
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"The stored input is invalid ({fields}).") from None


def _invalid(details: list[dict[str, Any]]) -> ReelgenError:
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ReelgenError(ErrorCode.INVALID_INPUT, f"Invalid input: {summary}", details=details)


def _envelope(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """What every ``/generate`` body shares, read alike for every model: its ``input`` (with a prompt,
    else ``MISSING_PROMPT``), the problems found so far (unknown top-level fields, a callback URL that
    is not a string) and its ``callback_url``."""
    inp = body.get("input")
    prompt = inp.get("prompt") if isinstance(inp, dict) else None
    if not isinstance(inp, dict) or prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise ReelgenError(ErrorCode.MISSING_PROMPT, "The 'input.prompt' field is required and must not be blank.")
    details: list[dict[str, Any]] = [
        {"field": k, "message": "unknown field"} for k in body if k not in ("model", "input", "callback_url")
    ]
    callback_url = body.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        details.append({"field": "callback_url", "message": "must be a string URL"})
    return inp, details, callback_url


def parse_extend(body: dict[str, Any]) -> ExtendRequest:
    """Validate an untrusted ``/generate`` body naming ``VIDEO_EXTEND`` (the caller checked ``model``)."""
    inp, details, callback_url = _envelope(body)
    parsed: ExtendInput | None = None
    try:
        parsed = ExtendInput.model_validate(inp)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            details.append({"field": "input" + ("." + _loc(err) if err["loc"] else ""), "message": msg})
    if details or parsed is None:
        raise _invalid(details)
    return ExtendRequest(input=parsed, callback_url=callback_url)


def parse_request(body: Any) -> GenerateRequest | ExtendRequest:
    """Validate an untrusted ``/generate`` body for any served model (``parse_generate`` /
    ``parse_extend``), raising ``ReelgenError`` with the contract's codes."""
    if isinstance(body, dict) and body.get("model") == VIDEO_EXTEND:
        return parse_extend(body)
    return parse_generate(body, ALL_MODEL_IDS)


def parse_generate(body: Any, models: Collection[str] = MODEL_IDS) -> GenerateRequest:
    """Validate an untrusted ``/generate`` body for the two Kling models, raising ``ReelgenError``
    with the contract's codes (``models``: the ids an ``INVALID_MODEL`` message lists as available)."""
    if not isinstance(body, dict):
        raise ReelgenError(ErrorCode.INVALID_JSON, "The request body must be a JSON object.")
    model = body.get("model")
    if model is None or model == "":
        raise ReelgenError(ErrorCode.MISSING_MODEL, "The 'model' field is required.")
    if not isinstance(model, str) or model not in MODEL_IDS:
        raise ReelgenError(
            ErrorCode.INVALID_MODEL, f"Unknown model {str(model)[:100]!r}. Available: {', '.join(models)}."
        )
    inp, details, callback_url = _envelope(body)
    if model == TEXT_TO_VIDEO and "image_urls" in inp:
        details.append(
            {"field": "input.image_urls", "message": f"not accepted by {TEXT_TO_VIDEO}; use {IMAGE_TO_VIDEO}"}
        )
    if model == IMAGE_TO_VIDEO:
        if "aspect_ratio" in inp:
            details.append(
                {
                    "field": "input.aspect_ratio",
                    "message": "image-to-video takes the ratio nearest its start frame",
                }
            )
        if not inp.get("image_urls"):
            details.append({"field": "input.image_urls", "message": "1 or 2 images are required"})
    parsed: GenerateInput | None = None
    try:
        parsed = GenerateInput.model_validate(inp)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = str(err["msg"]).removeprefix("Value error, ")
            details.append({"field": "input" + ("." + _loc(err) if err["loc"] else ""), "message": msg})
    both = parsed is not None and parsed.callback_url is not None and callback_url is not None
    if both and parsed is not None and parsed.callback_url != callback_url:
        details.append({"field": "input.callback_url", "message": "differs from the top-level callback_url"})
    if details or parsed is None:
        raise _invalid(details)
    if model == TEXT_TO_VIDEO and parsed.aspect_ratio is None:
        parsed = parsed.model_copy(update={"aspect_ratio": AspectRatio.WIDE})
    if parsed.callback_url is not None:  # Kling's place for it; one place from here on
        callback_url = parsed.callback_url
        parsed = parsed.model_copy(update={"callback_url": None})
    return GenerateRequest(model=model, input=parsed, callback_url=callback_url)


# --------------------------------------------------------------------------------------------
# Uploads: VicSee's presign request
# --------------------------------------------------------------------------------------------
#: What a presigned upload may declare (``image/jpg`` is read as ``image/jpeg``).
UPLOAD_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")
PRESIGN_CONTENT_TYPES = (*UPLOAD_CONTENT_TYPES, "image/jpg")


class PresignRequest(BaseModel):
    """``POST /api/v1/upload`` with a JSON body: the image to come, ``{contentType, sizeBytes}``
    (``filename`` is accepted and ignored, as VicSee's clients may send it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contentType: StrictStr
    sizeBytes: Annotated[int, BeforeValidator(_whole_number)] = Field(ge=1)
    filename: StrictStr | None = Field(default=None, max_length=255)

    @property
    def media_type(self) -> str:
        return "image/jpeg" if self.contentType == "image/jpg" else self.contentType

    @classmethod
    def parse(cls, body: Any) -> PresignRequest:
        """Validate an untrusted presign body (``INVALID_JSON`` / ``INVALID_INPUT`` with details)."""
        if not isinstance(body, dict):
            raise ReelgenError(ErrorCode.INVALID_JSON, "The request body must be a JSON object.")
        try:
            parsed = cls.model_validate(body)
        except ValidationError as exc:
            details = [
                {"field": _loc(e) or "body", "message": str(e["msg"]).removeprefix("Value error, ")}
                for e in exc.errors(include_url=False)
            ]
            summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"Invalid upload: {summary}", details=details) from None
        if parsed.contentType not in PRESIGN_CONTENT_TYPES:
            message = f"must be one of {', '.join(PRESIGN_CONTENT_TYPES)}"
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"Invalid upload: contentType: {message}",
                details=[{"field": "contentType", "message": message}],
            )
        return parsed


# --------------------------------------------------------------------------------------------
# Responses (camelCase on the wire, as the seed API)
# --------------------------------------------------------------------------------------------
class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


TaskStatusLiteral = Literal["pending", "processing", "completed", "failed", "cancelled", "success"]


class TaskResult(_Wire):
    url: str
    type: str = "video"


class TaskOutput(_Wire):
    url: str
    duration: float | None = None
    format: str = "mp4"
    hasAudio: bool | None = None


class TaskError(_Wire):
    code: str
    key: str | None = None
    message: str = ""


class GenerateAccepted(_Wire):
    id: str
    model: str
    status: str
    creditsUsed: int
    creditsRemaining: int
    createdAt: str


class TaskView(_Wire):
    id: str
    taskId: str | None = None
    model: str | None = None
    status: str
    mediaType: str = "video"
    prompt: str | None = None
    input: dict[str, Any] | None = None
    createdAt: str | None = None
    startedAt: str | None = None
    completedAt: str | None = None
    creditsUsed: int | None = None
    progress: int | None = None
    queuePosition: int | None = None
    etaSeconds: float | None = None
    result: TaskResult | None = None
    output: TaskOutput | None = None
    error: TaskError | None = None
    #: Kling's ``external_task_id``, when the task was given one
    externalTaskId: str | None = None
    #: extension (``input.enhance_prompt``): the prompt the model was conditioned on, once completed;
    #: a multi-shot task shows one per shot in ``enhancedMultiPrompt`` instead
    enhancedPrompt: str | None = None
    enhancedMultiPrompt: list[dict[str, Any]] | None = None


class PresignView(_Wire):
    """A presigned upload: ``PUT`` the bytes to ``uploadUrl`` (no key), then use ``publicUrl``."""

    uploadUrl: str
    publicUrl: str
    key: str
    expiresAt: str


class UploadView(_Wire):
    """A stored upload: ``url`` (``reelgen-upload://<id>``) or ``publicUrl`` go in ``image_urls``."""

    id: str
    url: str
    key: str
    format: str
    width: int
    height: int
    size: int
    publicUrl: str | None = None


class DownloadView(_Wire):
    url: str
    type: str = "video"
    expiresAt: str | None = None


class CreditsView(_Wire):
    credits: int
    reserved: int = 0


class PriceTable(_Wire):
    audio: int
    noAudio: int


class OfferedLora(_Wire):
    name: str
    defaultStrength: float
    triggerWords: list[str] = Field(default_factory=list)


class ModelView(_Wire):
    id: str
    name: str
    type: str = "video"
    inputs: list[str]
    aspectRatios: list[str] | None = None
    modes: list[str]
    minDuration: int
    maxDuration: int
    pricing: dict[str, PriceTable]
    #: extension: the LoRAs a request may ask for by name (``input.loras``), at most ``maxLoras``
    loras: list[OfferedLora] = Field(default_factory=list)
    maxLoras: int = 0
    #: extension: the ``camera_control.type`` values this server runs (empty: the field is refused)
    cameraMoves: list[str] = Field(default_factory=list)
    #: extension: credits per enhanced prompt (``input.enhance_prompt``, one per shot); None: refused
    enhancePromptCredits: int | None = None
