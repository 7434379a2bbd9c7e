"""`make demo` = install + scripts/demo.py; the script itself runs here end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reelgen import media

ROOT = Path(__file__).resolve().parents[1]


def test_demo_script(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
    env["REELGEN_DEMO_OUT"] = str(tmp_path / "out")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "noise" in done.stdout and "server stopped" in done.stdout
    t2v = media.probe(tmp_path / "out" / "text-to-video.mp4")
    i2v = media.probe(tmp_path / "out" / "image-to-video.mp4")
    assert abs(t2v.duration - 5) <= 1 / 24 + 1e-6 and t2v.has_audio
    assert abs(i2v.duration - 3) <= 1 / 24 + 1e-6 and (i2v.width, i2v.height) == (128, 72)
