"""Helpers for end-to-end sweep tests: copies of shipped specs pointed at temporary folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP = str(Path(sys.executable).with_name("sweep"))
BUNDLED_GAMES = REPO / "data" / "games"


def bundled_games(n: int | None = None, start: int = 0) -> list[Path]:
    """The first ``n`` CSA games of the bundled corpus (``data/games``, part of the repository: a
    missing one is a failure, never a skip)."""
    files = sorted(BUNDLED_GAMES.glob("*.csa"))
    wanted = files[start:] if n is None else files[start:start + n]
    assert n is None or len(wanted) == n, f"the bundled corpus {BUNDLED_GAMES} holds {len(files)} games, not {n}"
    assert wanted, f"the bundled corpus {BUNDLED_GAMES} is empty: it is part of the repository"
    return wanted


def tmp_spec(spec_name: str, tmp_path: Path, data_dir: Path, **changes) -> Path:
    """A copy of ``sweeps/<spec_name>`` with storage, runs and datasets under temporary folders."""
    data = yaml.safe_load((REPO / "sweeps" / spec_name).read_text())
    data.update(changes)
    data["storage"] = f"sqlite:///{tmp_path}/studies/{data['name']}.db"
    data["runs_dir"] = str(tmp_path / "runs")
    if data.get("stage", 1) != 1 or "data" in data:
        data["data"] = {**data.get("data", {}), "games": [str(REPO / "data" / "games")], "dir": str(data_dir)}
    path = tmp_path / spec_name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bench_module(name: str):
    """``bench/<name>.py`` as a module (bench/ is no package), loaded once."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def step_studies(url) -> list:
    """Summaries of the step studies in storage ``url`` (not the sweeps' lock studies)."""
    import optuna

    return [s for s in optuna.get_all_study_summaries(url) if not s.study_name.endswith("@lock")]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([SWEEP, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one line a refused command printed (exit 2, no traceback), holding every fragment."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sweep "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_studies(port: int, deadline_s: float = 300.0) -> dict | None:
    """The study list a dashboard on ``port`` serves (``/api/studies``), waiting for it to answer;
    None when it never does within ``deadline_s``."""
    import json

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    return None
