"""Engines that exist only for the tests, selected by profiles in ``tests/engines/profiles.toml``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The repository root: what a worker process or Ray actor needs on its path to import ``tests.engines``.
ROOT = Path(__file__).resolve().parents[2]
#: The test profiles (``--profiles-file``): fault-injecting variants of ``ltx-2-tiny``.
PROFILES = Path(__file__).with_name("profiles.toml")
#: The same profile names on the plain tiny engine, for a worker that must run those tasks without faults.
PLAIN_PROFILES = Path(__file__).with_name("plain.toml")


def importable_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the repository root first on ``PYTHONPATH``, so a child process can import the test engines."""
    out = dict(env)
    rest = out.get("PYTHONPATH", "")
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([rest] if rest else [])])
    return out
