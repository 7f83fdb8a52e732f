"""Shared fixtures. The golden data of the upstream trainer is vendored in ``tests/golden``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
BUNDLED_GAMES = REPO / "data" / "games"


#: Test folders live in memory when the machine has a tmpfs to spare: every SQLite commit of a test
#: storage syncs to disk otherwise (8-15 ms each, thousands per run). Tests that need a disk-backed
#: folder (the memory-limit test) make their own. ``--basetemp`` given explicitly wins.
_SHM = Path("/dev/shm")


def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp or os.environ.get("MAOU_TEST_DISK_TMP") or hasattr(config, "workerinput"):
        return
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return
    if stat.f_bavail * stat.f_frsize >= 4 * 2**30 and os.access(_SHM, os.W_OK):
        config.option.basetemp = str(_SHM / f"maou-pytest-{os.getpid()}")
        config._maou_shm_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    folder = getattr(config, "_maou_shm_basetemp", None)
    if folder:  # memory, not disk: give it back
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files with real sweeps or Ray sessions first: ``make test``'s two processes take files in
    this order (``--dist loadfile``), so the long ones start early and the short ones fill the end."""
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("ray")}
    items.sort(key=lambda item: item.path not in heavy)  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Golden data of the upstream trainer (see tests/golden/README.md); part of the repository."""
    assert GOLDEN.is_dir(), f"golden data missing at {GOLDEN}: it is part of the repository"
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
    from maou.data.build import ensure_datasets
    from maou.trainer.config import DataConfig

    out = tmp_path_factory.mktemp("bundled-data")
    return ensure_datasets(DataConfig(games=(str(BUNDLED_GAMES),), dir=str(out)), progress=False)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (skipped only where no server binary exists;
    CI installs Debian's postgresql)."""
    import shutil
    import tempfile

    from postgres import PostgresServer, server_binaries

    if server_binaries() is None:
        pytest.skip("no PostgreSQL server binaries (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="maou-pg-"))
    root.chmod(0o755)  # the server runs as the postgres user when the tests run as root
    server = PostgresServer(root / "pg")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
