"""The web playground end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

The real server and its tiny-engine worker serve the page; the browser pastes a key, sees the
price, is stopped by the multi-shot check, submits a 3 s request, watches it complete, and plays
the result in the page's ``<video>``. Without a browser the test skips, except under ``CI=true``
(``.ci/run`` installs it), where it fails. ``UPDATE_SCREENSHOTS=1`` refreshes docs/playground.png.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgen import service
from tests.api_fixtures import LiveServer
from tests.factories import make_account

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "playground.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def browser_or_skip() -> Any:
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)"
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{missing}; CI=true requires it", pytrace=False)
        pytest.skip(missing)
    return sync_playwright, expect


@pytest.fixture
def page() -> Iterator[Any]:
    sync_playwright, _ = browser_or_skip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


def test_static_files_and_headers(live_api: LiveServer) -> None:
    page = httpx.get(live_api.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/web/app.js"' in page.text and "<script>" not in page.text  # no inline script
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{live_api.url}/web/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    assert httpx.get(live_api.url + "/docs").status_code == 200
    missing = httpx.get(live_api.url + "/web/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


PLAY_VIDEO = """async () => {
  const v = document.getElementById("result-video");
  if (v.readyState < 1) {
    await new Promise((resolve, reject) => {
      v.addEventListener("loadedmetadata", resolve, { once: true });
      v.addEventListener("error", () => reject(new Error("video error " + (v.error && v.error.code))), { once: true });
    });
  }
  v.muted = true;
  await v.play();
  const start = performance.now();
  while (v.currentTime < 0.3 && performance.now() - start < 20000) await new Promise((r) => setTimeout(r, 50));
  v.pause();
  return { duration: v.duration, played: v.currentTime, src: v.currentSrc, width: v.videoWidth, height: v.videoHeight };
}"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the page is database-blind
def test_playground_generates_and_plays_a_3_second_video(
    page: Any, live: LiveServer, ctx: service.Context, tmp_path: Path
) -> None:
    _, expect = browser_or_skip()
    owner = make_account(ctx, credits=1000, name="browser")
    page.goto(live.url + "/")
    expect(page.locator("#model option")).to_have_count(3)  # the two Kling models and the extend model

    # a wrong key: a readable one-line message from the error envelope
    page.fill("#api-key", "sk-" + "x" * 43)
    page.press("#api-key", "Tab")  # leaving the field saves the key and checks it
    expect(page.locator("#balance")).to_contain_text("INVALID_API_KEY")
    assert "Check the key" in page.text_content("#balance")

    page.fill("#api-key", owner.key)
    page.press("#api-key", "Tab")
    expect(page.locator("#balance")).to_contain_text("1000 credits available")
    page.fill("#prompt", "a red fox runs through fresh snow")
    page.fill("#duration", "3")
    assert page.text_content("#price") == "Price: 126 credits (42 credits/s \N{MULTIPLICATION SIGN} 3 s)"
    page.uncheck("#audio")
    assert page.text_content("#price") == "Price: 84 credits (28 credits/s \N{MULTIPLICATION SIGN} 3 s)"
    page.check("#audio")

    # multi-shot durations that do not add up are stopped before anything is sent
    page.check("#multi-shots")
    page.click("#add-shot")
    page.locator(".shot-prompt").nth(1).fill("the fox jumps")
    page.locator(".shot-duration").nth(1).fill("2")
    assert page.text_content("#shot-sum") == "Shots add up to 5 s of 3 s"
    page.click("#submit")
    assert "The shots add up to 5 s but the video is 3 s." in page.text_content("#form-errors")
    assert page.is_hidden("#task-panel")
    page.uncheck("#multi-shots")

    page.click("#submit")
    expect(page.locator("#task-panel")).to_be_visible()
    expect(page.locator("#task-status")).to_have_text(re.compile(r"^(completed|failed)$"), timeout=120_000)
    assert page.text_content("#task-status") == "completed", page.text_content("#task-error")
    assert page.get_attribute("#task-progress", "value") == "100"
    played = page.evaluate(PLAY_VIDEO)
    assert abs(played["duration"] - 3.0) <= 0.1, played
    assert played["played"] >= 0.3 and (played["width"], played["height"]) == (128, 72)
    assert played["src"].startswith(live.url + "/api/v1/files/")
    assert "3.0 s · with audio · 126 credits" in page.text_content("#result-meta")
    # the task's live preview (on in ltx-2-tiny) is kept with its result: the last one is shown
    expect(page.locator("#task-preview-box")).to_be_visible()
    assert page.evaluate("() => document.getElementById('task-preview').naturalWidth") > 0
    assert page.get_attribute("#task-preview", "src").startswith("blob:")
    task_id = page.text_content("#task-id")
    expect(page.locator("#balance")).to_contain_text("874 credits available")
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "docs/playground.png is kept in the repository"

    # recent tasks: kept in this browser, statuses refreshed from the server after a reload
    page.reload()
    expect(page.locator(f'tr[data-task-id="{task_id}"] td.status')).to_have_text("completed")
    assert page.input_value("#api-key") == owner.key

    page.click(f'tr[data-task-id="{task_id}"] button:not(.extend)')
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.locator("#result-video")).to_be_visible()

    # extend it from its row: the extend model with this task, 3 s more, one 6 s video
    page.click(f'tr[data-task-id="{task_id}"] button.extend')
    assert page.input_value("#model") == "kling-3-0-video-extend"
    assert page.input_value("#extend-task") == task_id and page.is_hidden("#mode-field")
    page.fill("#prompt", "the fox jumps over a log")
    page.fill("#duration", "3")
    assert page.text_content("#price").startswith("Price: 3 s \N{MULTIPLICATION SIGN} the original's mode rate")
    page.click("#submit")
    expect(page.locator("#task-id")).not_to_have_text(task_id)
    expect(page.locator("#task-status")).to_have_text(re.compile(r"^(completed|failed)$"), timeout=180_000)
    assert page.text_content("#task-status") == "completed", page.text_content("#task-error")
    assert "6.0 s · with audio · 126 credits" in page.text_content("#result-meta")
    expect(page.locator("#balance")).to_contain_text("748 credits available")
