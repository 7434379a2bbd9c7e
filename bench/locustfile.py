"""Locust users for ``bench/load.py``: submit, poll until done, download (RELIABILITY 22).

Each simulated user takes one API key from the file named by ``REELGEN_LOAD_KEYS`` (one key a
line, handed out in turn) and loops: submit a 3-5 s text-to-video task, poll it every second until
it ends (or ``POLL_LIMIT_S``), and once completed ask for its download link and fetch the MP4
through it; now and then it reads its credits. Every response's status is counted and written to
``REELGEN_LOAD_STATUS`` (JSON) when locust quits, so the wrapper can report 5xx exactly.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

POLL_LIMIT_S = 150.0
TERMINAL = {"completed", "failed", "cancelled"}
_keys = itertools.cycle(Path(os.environ["REELGEN_LOAD_KEYS"]).read_text().split())
_statuses: Counter[str] = Counter()
_outcomes: Counter[str] = Counter()


def _count(response: Any = None, exception: Any = None, **_: Any) -> None:
    _statuses[str(response.status_code) if response is not None and response.status_code else "no response"] += 1


def _write(**_: Any) -> None:
    out = os.environ.get("REELGEN_LOAD_STATUS")
    if out:
        Path(out).write_text(json.dumps({"statuses": dict(_statuses), "tasks": dict(_outcomes)}))


events.request.add_listener(_count)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_write)  # type: ignore[no-untyped-call]


class VideoUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {next(_keys)}"

    @task(10)
    def submit_poll_download(self) -> None:
        body = {
            "model": "kling-3-0-text-to-video",
            "input": {"prompt": "a red fox runs through snow", "duration": random.choice([3, 4, 5])},
        }
        r = self.client.post("/api/v1/generate", json=body, name="POST /api/v1/generate")
        if r.status_code != 200:
            _outcomes[f"submit {r.status_code}"] += 1
            return
        task_id = r.json()["data"]["id"]
        deadline = time.monotonic() + POLL_LIMIT_S
        status = "pending"
        while time.monotonic() < deadline:
            time.sleep(1.0)
            r = self.client.get(f"/api/v1/tasks/{task_id}", name="GET /api/v1/tasks/{id}")
            if r.status_code == 200:
                status = r.json()["data"]["status"]
                if status in TERMINAL:
                    break
        _outcomes[status] += 1
        if status != "completed":
            return
        r = self.client.get(f"/api/v1/tasks/{task_id}/download", name="GET /api/v1/tasks/{id}/download")
        if r.status_code == 200:
            self.client.get(r.json()["data"]["url"], name="GET /api/v1/files/{id}.mp4 (signed)")

    @task(1)
    def credits(self) -> None:
        self.client.get("/api/v1/credits", name="GET /api/v1/credits")
