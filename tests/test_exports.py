"""The SDK surface: ``reelgen.__all__`` is explicit and sorted, and importing the SDK stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import reelgen

HEAVY = ("torch", "diffusers", "transformers", "sqlalchemy", "fastapi", "uvicorn", "av", "numpy", "PIL")


def test_all_is_sorted_and_complete() -> None:
    assert reelgen.__all__ == sorted(reelgen.__all__)
    for name in reelgen.__all__:
        assert hasattr(reelgen, name), name
    public = {n for n in vars(reelgen) if not n.startswith("_") and not isinstance(getattr(reelgen, n), type(sys))}
    # every public name at the top level is exported (submodules are not names of the SDK)
    assert public - set(reelgen.__all__) == {"annotations"}
    assert {"Client", "AsyncClient", "ReelgenError", "ErrorCode", "Task", "TaskView", "GenerateRequest"} <= set(
        reelgen.__all__
    )
    assert reelgen.ReelgenError is reelgen.errors.ReelgenError
    assert reelgen.Client.__module__ == "reelgen.client"


def test_importing_the_sdk_imports_no_server_or_engine_module() -> None:
    """``pip install reelgen`` (no extras) must be able to import the SDK and run the CLI's user verbs."""
    code = (
        "import json, sys\n"
        "import reelgen, reelgen.client\n"
        "import reelgen.cli, reelgen.generation\n"  # what the user verbs of the CLI import
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert "httpx" in loaded and "pydantic" in loaded  # the probe really imported the SDK
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
