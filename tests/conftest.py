"""Shared fixtures. The golden data of the upstream trainer is vendored in ``tests/golden``.

The suite leaves the project alone: every process of it works in a temporary folder (relative paths
of a test land there, never in the project), and the session fails when the project's own
``studies/``, ``results/``, ``runs/`` or ``data/build/`` changed while it ran (names, sizes and
modification times, compared at the end)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
BUNDLED_GAMES = REPO / "data" / "games"
#: The user's folders in the project, which no test may read or write.
PROTECTED = ("studies", "results", "runs", "data/build")


def project_listing() -> dict[str, list[tuple[str, int, int]]]:
    """(path, size, modification time) of everything under the protected folders of the project."""
    listing = {}
    for name in PROTECTED:
        root = REPO / name
        entries = []
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            stat = path.lstat()
            entries.append((str(path.relative_to(REPO)), 0 if path.is_dir() else stat.st_size,
                            0 if path.is_dir() else stat.st_mtime_ns))
        listing[name] = entries
    return listing


def _listing_changes(before: dict, after: dict) -> list[str]:
    changes = []
    for name in PROTECTED:
        old, new = {e[0]: e[1:] for e in before[name]}, {e[0]: e[1:] for e in after[name]}
        changes += [f"added {p}" for p in sorted(new.keys() - old.keys())]
        changes += [f"removed {p}" for p in sorted(old.keys() - new.keys())]
        changes += [f"changed {p}" for p in sorted(old.keys() & new.keys()) if old[p] != new[p]]
    return changes


#: Test folders live in memory when the machine has a tmpfs to spare: every SQLite commit of a test
#: storage syncs to disk otherwise (8-15 ms each, thousands per run). Tests that need a disk-backed
#: folder (the memory-limit test) make their own. ``--basetemp`` given explicitly wins.
_SHM = Path("/dev/shm")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config._maou_project_listing = project_listing()  # type: ignore[attr-defined]
    _memory_basetemp(config)


def _memory_basetemp(config: pytest.Config) -> None:
    if config.option.basetemp or os.environ.get("MAOU_TEST_DISK_TMP") or hasattr(config, "workerinput"):
        return
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return
    if stat.f_bavail * stat.f_frsize >= 4 * 2**30 and os.access(_SHM, os.W_OK):
        config.option.basetemp = str(_SHM / f"maou-pytest-{os.getpid()}")
        config._maou_shm_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when the project's own folders changed while it ran."""
    before = getattr(session.config, "_maou_project_listing", None)
    if before is None:  # an xdist worker: the controller compares
        return
    changes = _listing_changes(before, project_listing())
    session.config._maou_project_changes = changes  # type: ignore[attr-defined]
    if changes:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """What was skipped, one line a reason; and any change the suite made to the project."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        reasons = Counter(report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple)
                          else str(report.longrepr) for report in skipped)
        terminalreporter.section(f"skipped: {len(skipped)} test{'s' if len(skipped) != 1 else ''}")
        for reason, count in reasons.most_common():
            terminalreporter.line(f"{count:3d} x {reason}")
    changes = getattr(config, "_maou_project_changes", [])
    if changes:
        terminalreporter.section("the tests changed the project's own folders", red=True)
        for line in changes[:50]:
            terminalreporter.line(line)
        if len(changes) > 50:
            terminalreporter.line(f"... and {len(changes) - 50} more")


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
def _working_folder_outside_the_project():
    """Every process of the suite (xdist's workers too) runs its tests in a temporary working folder:
    a relative path in a test (a spec's default runs/ or results/ folder) lands there, never in the
    project. Set once collection is done (collection reads the command line's relative paths)."""
    import shutil

    before = os.getcwd()
    folder = tempfile.mkdtemp(prefix="maou-test-cwd-")
    os.chdir(folder)
    yield Path(folder)
    os.chdir(before)
    shutil.rmtree(folder, ignore_errors=True)


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
