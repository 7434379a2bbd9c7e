"""The rules of the service, one module per use case; the HTTP layer calls exactly one function
per route, and the CLI's operator verbs call them too.

* ``context``: ``Context`` (database, settings, profile, storage, clock), built once and passed in;
* ``admission``: an API key → an account, its request rate and active-task cap; operators' overrides;
* ``tasks``: submit (validate, price, reserve, create in one transaction), read, list, cancel,
  estimate, and follow a task as events;
* ``uploads``: input images stored for later ``image_urls`` (the bytes, or VicSee's presign flow),
  and their retention purge;
* ``links`` and ``results``: signed, expiring result links and the files behind them;
* ``previews``: a running task's live preview, for its owner;
* ``account``: credits and the webhook secret; ``catalogue``: models and prices, readiness, metrics.

Plain functions over a ``Context``; HTTP details (the bearer header, Server-Sent Events framing)
live in ``reelgen.api``. Money moves only in ``store.ledger`` / ``store.tasks``.
"""

from __future__ import annotations

from reelgen.service.account import credits, webhook_secret
from reelgen.service.admission import Admission, admit, set_limits, set_schedule
from reelgen.service.catalogue import MODEL_TYPES, TOOLS, metrics, models, ready, tool
from reelgen.service.context import Context, utcnow
from reelgen.service.links import signed_file_url
from reelgen.service.previews import preview_file
from reelgen.service.results import ResultFile, download, result_for_owner, result_for_token
from reelgen.service.tasks import (
    CURSOR_PATTERN,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    TaskEvent,
    cancel,
    estimate,
    get_task,
    list_tasks,
    submit,
    task_events,
    task_view,
)
from reelgen.service.uploads import presign, put_presigned, read_upload, upload
from reelgen.views import iso

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MODEL_TYPES",
    "TOOLS",
    "Admission",
    "Context",
    "ResultFile",
    "TaskEvent",
    "admit",
    "cancel",
    "credits",
    "download",
    "estimate",
    "get_task",
    "iso",
    "list_tasks",
    "metrics",
    "models",
    "presign",
    "preview_file",
    "put_presigned",
    "read_upload",
    "ready",
    "result_for_owner",
    "result_for_token",
    "set_limits",
    "set_schedule",
    "signed_file_url",
    "submit",
    "task_events",
    "task_view",
    "tool",
    "upload",
    "utcnow",
    "webhook_secret",
]
