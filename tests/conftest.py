"""Shared pytest configuration: fixture plugins for the whole suite, and one thread per process.

The suite runs under pytest-xdist (``make test``): several test processes, each starting worker,
server and rank processes of its own, on a 2-core machine. PyTorch's OpenMP pool defaults to one
thread per core in *every* process, and many such pools on two cores spin against each other (a
module of tiny-engine renders took 4x longer under ``-n 2`` with the default than with one thread).
One thread per process, set here before anything imports torch and inherited by every process a
test starts, leaves the parallelism to the processes. An explicit ``OMP_NUM_THREADS`` wins.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

pytest_plugins = ["tests.store_fixtures", "tests.api_fixtures", "tests.s3_fixtures"]


# --- engine fixtures ---------------------------------------------------------------------------
import pytest  # noqa: E402

from reelgen.engines.base import Engine  # noqa: E402
from reelgen.profiles import Profile  # noqa: E402


@pytest.fixture(scope="session")
def tiny_profile() -> Profile:
    from reelgen.profiles import get_profile

    return get_profile("ltx-2-tiny")


@pytest.fixture(scope="session")
def tiny_engine(tiny_profile: Profile) -> Engine:
    """The ``ltx-2-tiny`` engine on CPU, loaded once for the whole session (load once, generate many)."""
    from reelgen.engines import load_engine

    return load_engine(tiny_profile, device="cpu")


# --- xdist groups ----------------------------------------------------------------------------------
#: Modules whose tests must share one test process under ``--dist loadgroup``: the Ray modules (one
#: local Ray cluster at a time on a 2-core machine; both start their own and would compete for the
#: same two CPUs), and modules whose module-scoped fixture is costly (a ``reelgen serve`` process, an
#: engine, renders shared by every test) and would otherwise be built again in each test process.
XDIST_GROUPS = {
    "tests.test_ray": "ray",
    "tests.test_ray_groups": "ray",
    "tests.test_readme": "readme",
    "tests.test_continuity": "continuity",
    "tests.test_creative": "creative",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = XDIST_GROUPS.get(item.module.__name__ if item.module else "")
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
