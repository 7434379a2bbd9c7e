"""Every shell example in README.md runs here, as written (ports and paths adapted to a temp dir)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from reelgen import media

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    m = re.search(rf"<!-- readme-test: {name} -->\s*```bash\n(.*?)```", README, re.S)
    assert m, f"README block {name!r} not found"
    return m.group(1)


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_with_venv() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_bash_block_is_covered() -> None:
    blocks = bash_blocks()
    # make demo / make test (run by CI and test_demo), server start, quickstart, local generate
    assert len(blocks) == 4, "a new README example needs a test here"
    assert blocks[0].startswith("make demo") and "make test" in blocks[0]


def test_server_start_keys_and_curl_quickstart(tmp_path: Path) -> None:
    start = bash_blocks()[1].strip().splitlines()
    serve_cmd, keys_cmd = start[0], start[1]
    port = free_port()
    serve_argv = shlex.split(serve_cmd.rstrip("&").strip().replace("--port 8000", f"--port {port}"))
    env = env_with_venv()
    server = subprocess.Popen(serve_argv, cwd=tmp_path, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30  # the bar: up within 30 s
        while True:
            assert server.poll() is None, "reelgen serve exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "reelgen serve was not ready within 30 s"
            time.sleep(0.2)
        out = subprocess.run(
            [*shlex.split(keys_cmd), "--json"], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
        )
        key = json.loads(out.stdout)["key"]
        run_env = {**env, "REELGEN_URL": base, "REELGEN_API_KEY": key}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block("quickstart")],
            cwd=tmp_path,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        credits = json.loads(done.stdout.strip().splitlines()[-1])
        assert credits == {"success": True, "data": {"credits": 1000 - 210, "reserved": 0}}
        for name in ("fox.mp4", "fox-proxy.mp4"):
            info = media.probe(tmp_path / name)
            assert (info.width, info.height) == (96, 64) and info.has_audio
            assert abs(info.duration - 5.0) <= 1 / 24 + 1e-6
        assert (tmp_path / "fox.mp4").read_bytes() == (tmp_path / "fox-proxy.mp4").read_bytes()
        # the key is never stored in plain text
        assert key.encode() not in (tmp_path / "reelgen-data" / "reelgen.db").read_bytes()
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (workers drained), then re-raises the signal it caught
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)


def test_local_generate_example(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block("local")],
        cwd=tmp_path,
        env=env_with_venv(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "noise" in (done.stdout + done.stderr).lower()
    info = media.probe(tmp_path / "fox-local.mp4")
    assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and info.has_audio
