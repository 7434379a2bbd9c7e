"""The embedded-default demo behind `make demo`.

Starts `reelgen serve` on the tiny profile in a temporary data directory, creates an API key,
submits a text-to-video and an image-to-video request over HTTP, waits for both, saves the MP4s,
says where they are, and stops the server. Tiny random weights make noise: the videos are real
H.264/AAC files of the requested size and duration, but their pictures and sound are random.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_data_uri() -> str:
    from PIL import Image

    img = Image.linear_gradient("L").resize((320, 180)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def wait_ready(base: str, proc: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready in time")


def wait_task(client: httpx.Client, task_id: str, label: str, deadline_s: float = 600.0) -> dict[str, object]:
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        data = client.get(f"/api/v1/tasks/{task_id}").json()["data"]
        state = (data["status"], data["progress"])
        if state != last:
            print(f"  {label}: {data['status']} {data['progress']}%", flush=True)
            last = state
        if data["status"] in ("completed", "failed", "cancelled"):
            return dict(data)
        time.sleep(0.5)
    raise SystemExit(f"{label} did not finish within {deadline_s:.0f} s")


def main() -> int:
    out_dir = Path(os.environ.get("REELGEN_DEMO_OUT", "demo-out")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="reelgen-demo-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    cli = [sys.executable, "-m", "reelgen"]
    print(f"reelgen demo: data directory {data_dir}")
    server = subprocess.Popen(
        [*cli, "serve", "--profile", "ltx-2-tiny", "--port", str(port), "--data-dir", str(data_dir)], env=env
    )
    try:
        wait_ready(base, server)
        created = subprocess.run(
            [*cli, "keys", "create", "--name", "demo", "--credits", "1000", "--json", "--data-dir", str(data_dir)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = json.loads(created.stdout)["key"]
        print(f"created an API key for account {json.loads(created.stdout)['account_id']} with 1000 credits")
        requests = {
            "text-to-video": {
                "model": "kling-3-0-text-to-video",
                "input": {"prompt": "a red fox runs through fresh snow at dawn", "duration": 5},
            },
            "image-to-video": {
                "model": "kling-3-0-image-to-video",
                "input": {"prompt": "the light slowly sweeps across", "duration": 3, "image_urls": [png_data_uri()]},
            },
        }
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            ids = {}
            for label, body in requests.items():
                r = client.post("/api/v1/generate", json=body)
                r.raise_for_status()
                d = r.json()["data"]
                ids[label] = d["id"]
                print(f"submitted {label}: task {d['id']}, {d['creditsUsed']} credits reserved")
            written = []
            for label, task_id in ids.items():
                task = wait_task(client, task_id, label)
                if task["status"] != "completed":
                    raise SystemExit(f"{label} ended {task['status']}: {task['error']}")
                url = client.get(f"/api/v1/tasks/{task_id}/download").json()["data"]["url"]
                path = out_dir / f"{label}.mp4"
                with httpx.stream("GET", url, timeout=60) as resp:
                    resp.raise_for_status()
                    with path.open("wb") as f:
                        for chunk in resp.iter_bytes():
                            f.write(chunk)
                output = task["output"]
                assert isinstance(output, dict)
                written.append(path)
                print(f"saved {path} ({output['duration']:.2f} s, audio: {output['hasAudio']})")
            credits = client.get("/api/v1/credits").json()["data"]
        print(f"credits left: {credits['credits']} (reserved {credits['reserved']})")
        print("NOTE: the tiny profile uses random weights, so these videos are noise (size, duration and")
        print("      sound track are real). Serve the real model with: reelgen serve --profile ltx-2 --weights DIR")
        print("MP4s: " + ", ".join(str(p) for p in written))
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        print("server stopped")


if __name__ == "__main__":
    raise SystemExit(main())
