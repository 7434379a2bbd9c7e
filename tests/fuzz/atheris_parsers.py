#!/usr/bin/env python3
"""Coverage-guided fuzzing of the request body parser and the image URL validator (atheris).

Run by hand or nightly, not in CI (RELIABILITY 20: 10 minutes per target)::

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_parsers.py generate -max_total_time=600 tests/fuzz/corpus/generate
    .venv/bin/python tests/fuzz/atheris_parsers.py url -max_total_time=600 tests/fuzz/corpus/url

Arguments after the target name go to libFuzzer (``-max_total_time``, ``-runs``, corpus
directories; ``-artifact_prefix=`` says where crash files go). The corpus directories are seeded
from ``tests/fuzz/regressions/<target>/`` and grow as the fuzzer finds new paths. A crash is an
input on which ``tests/fuzz/targets.py`` raised: copy its file into
``tests/fuzz/regressions/<target>/`` (``tests/test_fuzz_parsers.py`` replays every file there),
then fix the code.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    import reelgen.inputs
    import reelgen.safehttp
    import reelgen.schemas
    from tests.fuzz import targets

TARGETS = {"generate": targets.check_generate_bytes, "url": targets.check_url_bytes}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    name = sys.argv[1]
    args = [sys.argv[0], *sys.argv[2:]]
    for arg in args[1:]:
        corpus = Path(arg)
        if not arg.startswith("-") and not corpus.exists():
            corpus.mkdir(parents=True)
            for seed in (ROOT / "tests" / "fuzz" / "regressions" / name).glob("*"):
                shutil.copy(seed, corpus / seed.name)
    atheris.Setup(args, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    _ = reelgen.inputs, reelgen.safehttp
    main()
