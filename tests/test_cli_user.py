"""The ``reelgen`` user verbs (generate, tasks get, credits, models) against the real server.

Each verb goes through ``reelgen.cli.main`` and the SDK to a live server on a loopback socket;
what a shell user sees is checked: stdout, one-line errors on stderr, and the exit status.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from reelgen import cli, media, service
from reelgen.cli import EXIT_CODES, EXIT_HELP, main
from tests.api_fixtures import LiveServer, free_port, make_ctx, make_settings
from tests.factories import make_account
from tests.test_client import png_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REELGEN_API_KEY", raising=False)
    monkeypatch.delenv("REELGEN_BASE_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, code: str) -> None:
    assert err.startswith(f"error: {code}: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the CLI is database-blind; the SDK test covers both
def test_generate_tasks_credits_models(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(make_settings(tmp_path, db, allow_private_image_hosts=False), db)
    owner = make_account(ctx, credits=1000)
    with LiveServer(ctx, start_executor=True) as live:
        server = ["--server", live.url, "--api-key", owner.key]

        # --no-wait: the id alone on stdout, so TASK=$(reelgen generate ... --no-wait) works
        code, out, err = run(capsys, "generate", "a red fox runs", "--duration", "3", "--no-wait", *server)
        assert code == 0 and "126 credits reserved, 874 left" in err
        queued = out.strip()
        assert uuid.UUID(queued).hex == queued

        # waiting, with the progress bar on a terminal: the bar goes to stderr, the summary to stdout
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        out_file = tmp_path / "fox.mp4"
        code, out, err = run(
            capsys, "generate", "a red fox runs", "--duration", "3", "--no-audio", "-o", str(out_file), *server
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("task ") and " completed in " in lines[0]
        assert lines[1:] == ["cost 84 credits, 790 credits left", f"wrote {out_file} (3.0 s, no audio)"]
        assert "completed" in err and "100%" in err  # the bar's last frame
        info = media.probe(out_file)
        assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and not info.has_audio

        # key and server from the environment; --json: no bar, one JSON document
        monkeypatch.setenv("REELGEN_BASE_URL", live.url)
        monkeypatch.setenv("REELGEN_API_KEY", owner.key)
        start = png_file(tmp_path / "start.png", 320, 200)
        code, out, err = run(
            capsys,
            "generate",
            "a red card",
            "--image",
            str(start),
            "--duration",
            "3",
            "--shot",
            "the card turns=1",
            "--shot",
            "the card = falls=2",
            "-o",
            str(tmp_path / "card.mp4"),
            "--json",
        )
        assert code == 0 and err == ""
        summary = json.loads(out)
        assert summary["status"] == "completed" and summary["model"] == "kling-3-0-image-to-video"
        assert summary["creditsUsed"] == 126 and summary["creditsRemaining"] == 1000 - 126 - 84 - 126
        assert summary["hasAudio"] is True and summary["file"] == str(tmp_path / "card.mp4")
        info = media.probe(tmp_path / "card.mp4")
        assert (info.width, info.height) == (128, 72) and abs(info.duration - 3.0) <= 1 / 24 + 1e-6

        # the task queued first ran first: fetch it and its video
        code, out, _ = run(capsys, "tasks", "get", queued, "-o", str(tmp_path / "queued.mp4"))
        assert code == 0 and out.splitlines()[0] == f"task {queued}: completed (100%)"
        assert f"wrote {tmp_path / 'queued.mp4'}" in out and media.probe(tmp_path / "queued.mp4").has_audio
        code, out, _ = run(capsys, "tasks", "get", queued, "--json")
        assert code == 0 and json.loads(out)["id"] == queued

        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
        # a failed generation: a refused image address -> exit 5, one line naming the task's code
        code, out, err = run(capsys, "generate", "x", "--image", "http://169.254.169.254/latest/meta-data")
        assert code == 5 and out == ""
        one_line_error(err, "TASK_FAILED")
        assert "IMAGE_FETCH_FAILED" in err

        code, out, _ = run(capsys, "credits")
        assert code == 0 and out == "664 credits available, 0 reserved by running tasks\n"
        code, out, _ = run(capsys, "credits", "--json")
        assert code == 0 and json.loads(out) == {"credits": 664, "reserved": 0}
        monkeypatch.delenv("REELGEN_API_KEY")
        code, out, _ = run(capsys, "models")  # no key needed
        assert code == 0 and out.splitlines()[0].startswith("kling-3-0-text-to-video  3-15 s")
        assert "standard 28/42, professional 38/56" in out


def test_user_errors_exit_codes(
    capsys: pytest.CaptureFixture[str], live_api: LiveServer, ctx: service.Context, tmp_path: Path
) -> None:
    rich = make_account(ctx, credits=1000, name="rich")
    broke = make_account(ctx, credits=10, name="broke")
    server = ["--server", live_api.url]
    key = ["--api-key", rich.key]
    cases: list[tuple[list[str], int, str]] = [
        (["credits", *server, "--api-key", "sk-" + "x" * 43], 3, "INVALID_API_KEY"),
        (["generate", "a fox", *server, "--api-key", broke.key], 4, "INSUFFICIENT_CREDITS"),
        (["generate", "a fox", "--duration", "20", *server, *key], 2, "INVALID_INPUT"),
        (["generate", "a fox", "--shot", "one=1", "--shot", "two=1", *server, *key], 2, "INVALID_INPUT"),
        (["generate", "a fox", "--shot", "no seconds", *server, *key], 2, "INVALID_INPUT"),
        (["generate", "a fox", "--image", str(tmp_path / "missing.png"), *server, *key], 2, "INVALID_IMAGE"),
        (["tasks", "get", str(uuid.uuid4()), *server, *key], 8, "TASK_NOT_FOUND"),
        (["credits", "--server", f"http://127.0.0.1:{free_port()}", *key], 7, "CONNECTION_ERROR"),
        (["credits", *server], 2, "INVALID_SETTINGS"),
        # no worker here: the task stays pending
        (["generate", "a fox", "--duration", "3", "--timeout", "0.5", *server, *key], 6, "WAIT_TIMEOUT"),
    ]
    for argv, status, code_name in cases:
        code, out, err = run(capsys, *argv)
        assert code == status, (argv, err)
        one_line_error(err, code_name)
        assert out == ""
    code, out, _ = run(capsys, "generate", "a fox", "--duration", "3", "--no-wait", *server, *key)
    pending = out.strip()
    code, _, err = run(capsys, "tasks", "get", pending, "-o", str(tmp_path / "early.mp4"), *server, *key)
    assert code == 8 and not (tmp_path / "early.mp4").exists()
    one_line_error(err, "NO_RESULT")
    code, out, _ = run(capsys, "tasks", "get", pending, *server, *key)
    # second in line, behind the task the WAIT_TIMEOUT case left pending
    assert code == 0 and out.splitlines()[:2] == [f"task {pending}: pending (0%)", "queue position: 2"]


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out
    documented = {int(line.split()[0]) for line in EXIT_HELP.splitlines()[1:] if line.strip()[:1].isdigit()}
    assert set(EXIT_CODES.values()) | {0, 1, 2, 130} == documented
    for code_name in EXIT_CODES:
        assert code_name in EXIT_HELP or code_name.startswith("INVALID_") or code_name == "MISSING_AUTH_HEADER"
