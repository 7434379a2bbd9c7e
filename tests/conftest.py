"""Shared pytest configuration: fixture plugins for the whole suite."""

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
