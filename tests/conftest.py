"""Shared fixtures.

``shared_data``: the real DCASE clips in ../shared/data (tests that need them skip without).
``artifacts_dir``: a cache for expensive artifacts (trained runs, bundles) shared between the
main test run and the torch-free Python 3.10 run (``EDGE_ASD_ARTIFACTS``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Fixtures live in tests/fixtures/ and are loaded here, in one place, for every test folder.
pytest_plugins = ["tests.fixtures.mosquitto", "tests.fixtures.bundles", "tests.fixtures.faults"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("EDGE_ASD_EXPECT_NO_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise pytest.UsageError("EDGE_ASD_EXPECT_NO_TORCH=1 but torch is importable in this venv")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DCASE clips not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("EDGE_ASD_ARTIFACTS", REPO / ".cache" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def no_torch_guard():
    """Fails the test if it imported torch (device-side code must not)."""
    before = "torch" in sys.modules
    yield
    if not before and "torch" in sys.modules:
        pytest.fail("device-side code imported torch")


@pytest.fixture(scope="session")
def cached_bundle(artifacts_dir: Path) -> Path:
    """A bundle of a randomly initialised model (engines tests): exported once when torch is
    here, reused from the artifacts folder by the torch-free Python 3.10 run."""
    import importlib.util

    path = artifacts_dir / "bundle-random"
    if importlib.util.find_spec("torch") is not None:
        from tests.fixtures.random_bundle import ensure_random_bundle

        return ensure_random_bundle(path)
    if not (path / "model.json").is_file():
        pytest.skip(f"no cached bundle at {path}: run the main test suite (with torch) first")
    return path
