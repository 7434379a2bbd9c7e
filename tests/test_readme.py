"""Every example in README.md (shell and Python) runs here, as written (ports and paths adapted to a temp dir).

One ``reelgen serve`` started from the README's own command serves the curl, SDK and CLI examples;
each example gets its own account from the README's ``keys create`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reelgen import media

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(name: str, lang: str = "bash") -> str:
    m = re.search(rf"<!-- readme-test: {name} -->\s*```{lang}\n(.*?)```", README, re.S)
    assert m, f"README block {name!r} ({lang}) not found"
    return m.group(1)


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def code_blocks() -> list[str]:
    return re.findall(r"```(?:bash|python)\n(.*?)```", README, re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_with_venv() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


#: README examples by marker name; each runs in a test below.
TESTED = {
    "quickstart": "bash",
    "sdk": "python",
    "sdk-async": "python",
    "cli": "bash",
    "local": "bash",
    "openai": "python",
    "mcp-stdio": "json",
    "mcp-http": "json",
}


def test_every_block_is_covered() -> None:
    blocks = code_blocks()
    # make demo / make test (run by CI and test_demo), server start (the fixture below), and TESTED
    runnable = [name for name, lang in TESTED.items() if lang in ("bash", "python")]
    assert len(blocks) == 2 + len(runnable), "a new README example needs a test here"
    assert len(bash_blocks()) == 2 + sum(lang == "bash" for lang in TESTED.values())
    assert len(re.findall(r"```json\n", README)) == sum(lang == "json" for lang in TESTED.values())
    assert blocks[0].startswith("make demo") and "make test" in blocks[0]
    assert blocks[1].startswith("reelgen serve")
    assert set(re.findall(r"<!-- readme-test: ([\w-]+) -->", README)) == set(TESTED)
    for name, lang in TESTED.items():
        assert lang == "json" or block(name, lang) in blocks


@dataclass
class Server:
    base: str
    cwd: Path
    env: dict[str, str]
    keys_cmd: str

    def new_key(self) -> str:
        """A new account with 1000 credits, made by the README's own ``keys create`` line."""
        out = subprocess.run(
            [*shlex.split(self.keys_cmd), "--json"],
            cwd=self.cwd,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        key: str = json.loads(out.stdout)["key"]
        return key

    def run(self, name: str, cwd: Path, key: str, lang: str = "bash") -> subprocess.CompletedProcess[str]:
        argv = ["bash", "-euo", "pipefail", "-c"] if lang == "bash" else [sys.executable, "-c"]
        done = subprocess.run(
            [*argv, block(name, lang)],
            cwd=cwd,
            env={**self.env, "REELGEN_BASE_URL": self.base, "REELGEN_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``reelgen serve`` and ``reelgen keys create`` exactly as the README's second block writes them."""
    cwd = tmp_path_factory.mktemp("readme-server")
    start = bash_blocks()[1].strip().splitlines()
    serve_cmd, keys_cmd = start[0], start[1]
    port = free_port()
    serve_argv = shlex.split(serve_cmd.rstrip("&").strip().replace("--port 8000", f"--port {port}"))
    env = env_with_venv()
    proc = subprocess.Popen(serve_argv, cwd=cwd, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30  # the bar: up within 30 s
        while True:
            assert proc.poll() is None, "reelgen serve exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "reelgen serve was not ready within 30 s"
            time.sleep(0.2)
        yield Server(base=base, cwd=cwd, env=env, keys_cmd=keys_cmd)
    finally:
        proc.send_signal(signal.SIGTERM)
        # a graceful stop: uvicorn (>= 0.29) shuts down, then re-raises the signal it caught
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)


def test_curl_quickstart(server: Server, tmp_path: Path) -> None:
    key = server.new_key()
    done = server.run("quickstart", tmp_path, key)
    credits = json.loads(done.stdout.strip().splitlines()[-1])
    assert credits == {"success": True, "data": {"credits": 1000 - 210, "reserved": 0}}
    for name in ("fox.mp4", "fox-proxy.mp4"):
        info = media.probe(tmp_path / name)
        assert (info.width, info.height) == (128, 72) and info.has_audio
        assert abs(info.duration - 5.0) <= 1 / 24 + 1e-6
    assert (tmp_path / "fox.mp4").read_bytes() == (tmp_path / "fox-proxy.mp4").read_bytes()
    # the key is never stored in plain text
    assert key.encode() not in (server.cwd / "reelgen-data" / "reelgen.db").read_bytes()


def test_sdk_examples(server: Server, tmp_path: Path) -> None:
    from PIL import Image

    key = server.new_key()
    done = server.run("sdk", tmp_path, key, "python")
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "completed 100" and lines[-1] == "84 credits; 916 left"
    info = media.probe(tmp_path / "fox-sdk.mp4")
    assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and not info.has_audio

    Image.new("RGB", (320, 200), (200, 40, 40)).save(tmp_path / "card.png")
    done = server.run("sdk-async", tmp_path, key, "python")
    assert done.stdout.startswith("INVALID_INPUT 400 [{'field': 'input.duration'")
    info = media.probe(tmp_path / "card.mp4")
    assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and info.has_audio and (info.width, info.height) == (128, 72)


def test_cli_examples(server: Server, tmp_path: Path) -> None:
    key = server.new_key()
    done = server.run("cli", tmp_path, key)
    out = done.stdout.splitlines()
    assert out[0].startswith("kling-3-0-text-to-video  3-15 s")
    assert "1000 credits available, 0 reserved by running tasks" in out
    assert "cost 126 credits, 874 credits left" in out and "wrote fox-cli.mp4 (3.0 s, with audio)" in out
    # tasks get on the --no-wait task: its status line and what it costs
    assert re.search(r"^task [0-9a-f]{32}: (pending|processing|completed) \(\d+%\)$", done.stdout, re.M), out
    assert "model kling-3-0-text-to-video, 3 s, 84 credits" in out
    info = media.probe(tmp_path / "fox-cli.mp4")
    assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and info.has_audio


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


def test_openai_sdk_example(server: Server, tmp_path: Path) -> None:
    from PIL import Image

    key = server.new_key()
    done = server.run("openai", tmp_path, key, "python")
    assert done.stdout.strip().splitlines()[-1] == "completed 4 1280x720"
    info = media.probe(tmp_path / "boat.mp4")
    assert abs(info.duration - 4.0) <= 1 / 24 + 1e-6 and info.has_audio
    with Image.open(tmp_path / "boat.webp") as thumb:
        assert thumb.format == "WEBP" and thumb.size == (info.width, info.height)
    credits = httpx.get(f"{server.base}/api/v1/credits", headers={"Authorization": f"Bearer {key}"}).json()
    assert credits["data"] == {"credits": 1000 - 168, "reserved": 0}


def _mcp_tools(config: dict[str, object], base: str, key: str) -> tuple[set[str], dict[str, object]]:
    """Connect the MCP SDK's own client as the README's config says (its URL and key replaced with
    this server's) and call two tools."""
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    entry: dict[str, object] = config["mcpServers"]["reelgen"]  # type: ignore[index]

    async def main() -> tuple[set[str], dict[str, object]]:
        async with contextlib.AsyncExitStack() as stack:
            if "command" in entry:
                env = {**env_with_venv(), **entry["env"], "REELGEN_BASE_URL": base, "REELGEN_API_KEY": key}  # type: ignore[dict-item]
                params = StdioServerParameters(command=str(entry["command"]), args=list(entry["args"]), env=env)  # type: ignore[call-overload]
                client = await stack.enter_async_context(Client(params))
            else:
                assert entry["type"] == "http" and str(entry["url"]).endswith(":8000/mcp")
                url = str(entry["url"]).replace("http://127.0.0.1:8000", base)
                headers = {"Authorization": f"Bearer {key}"}
                assert entry["headers"] == {"Authorization": "Bearer sk-..."}
                http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=60))
                client = await stack.enter_async_context(Client(streamable_http_client(url, http_client=http)))
            tools = {tool.name for tool in (await client.list_tools()).tools}
            price = await client.call_tool("estimate", {"prompt": "a fox", "duration": 3})
            assert not price.is_error, price.content
            return tools, price.structured_content

    result: tuple[set[str], dict[str, object]] = anyio.run(main)
    return result


@pytest.mark.parametrize("name", ["mcp-stdio", "mcp-http"])
def test_mcp_config_snippets(server: Server, name: str) -> None:
    config = json.loads(block(name, "json"))
    tools, price = _mcp_tools(config, server.base, server.new_key())
    assert {"generate", "wait", "estimate", "credits"} <= tools
    assert price["credits"] == 126
