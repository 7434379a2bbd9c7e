"""reelgen: a self-hostable, VicSee Kling 3.0-compatible video-generation API.

This package's top level is the SDK surface only (httpx and pydantic, nothing heavier): the
clients, the one error type with its codes, and the wire models shared with the server. The
server lives in submodules and needs the ``reelgen[server]`` extra.
"""

from __future__ import annotations

from reelgen.client import AsyncClient, Client, Task, TaskPage
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import (
    AspectRatio,
    CreditsView,
    DownloadView,
    GenerateAccepted,
    GenerateInput,
    GenerateRequest,
    Mode,
    ModelView,
    PresignView,
    PriceTable,
    Shot,
    TaskError,
    TaskOutput,
    TaskResult,
    TaskView,
    UploadView,
)

__version__ = "0.1.0"

__all__ = [
    "AspectRatio",
    "AsyncClient",
    "Client",
    "CreditsView",
    "DownloadView",
    "ErrorCode",
    "GenerateAccepted",
    "GenerateInput",
    "GenerateRequest",
    "Mode",
    "ModelView",
    "PresignView",
    "PriceTable",
    "ReelgenError",
    "Shot",
    "Task",
    "TaskError",
    "TaskOutput",
    "TaskPage",
    "TaskResult",
    "TaskView",
    "UploadView",
    "__version__",
]
