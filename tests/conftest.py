"""Shared fixtures. ``../shared`` (golden data, engine games) is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAOU_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
BUNDLED_GAMES = REPO / "data" / "games"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden data not present at {GOLDEN}")
    return GOLDEN


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """Keep the suite lean on 2-core CI machines."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    yield


@pytest.fixture(scope="session")
def bundled_data_dir(tmp_path_factory) -> Path:
    """Stage 1/2/3 datasets built once per test session from the bundled corpus (data/games)."""
    from maou.config import DataConfig
    from maou.data.build import ensure_datasets

    out = tmp_path_factory.mktemp("bundled-data")
    return ensure_datasets(DataConfig(games=(str(BUNDLED_GAMES),), dir=str(out)), progress=False)
