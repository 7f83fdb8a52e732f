"""The GPU check (``bench/gpu.py``) on CPU, sized down: one table, every row a number, exit 0, and
never an import of Ray (the GPU machines it is carried to have none)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The rows of the small (``--quick`` or CPU) table, in order.
CHECKS = ["train_stage / bare loop", "MFU 10x128 batch 4", "MFU 10x128 batch 16", "compact / dense, stage 2",
          "compact / dense, stage 3", "demo sweep",
          *(f"{k} concurrent {model}" for model in ("2x32", "10x128") for k in (1, 2))]  # 1, 2, 4, 8 at full sizes


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_fills_every_row(tmp_path, bundled_data_dir):
    no_ray = tmp_path / "no-ray"
    (no_ray / "ray").mkdir(parents=True)
    marker = tmp_path / "ray-imported"
    (no_ray / "ray" / "__init__.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['RAY_IMPORT_MARKER']).write_text('imported')\n"
        "raise ImportError('ray is not installed on this machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(no_ray), str(REPO)]), "RAY_IMPORT_MARKER": str(marker)}
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--quick", "--threads", "2",
               "--out", str(out), "--data-dir", str(bundled_data_dir)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert not marker.exists(), "the GPU check imported ray"

    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["ok"] and summary["sizes"] == "small"
    assert [row["check"] for row in summary["rows"]] == CHECKS
    for row in summary["rows"]:
        assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["unit"] and row["detail"], row
    table = (out / "gpu-check.md").read_text()
    printed = done.stdout
    for check in CHECKS:
        assert f"| {check} |" in table
        assert check in printed
    assert "n/a" not in table
