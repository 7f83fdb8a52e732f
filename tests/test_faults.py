"""Crash safety: the driver dies (as under ``kill -9``) at each of its storage write points, and
the resumed sweep equals an uninterrupted one: no trial lost, none finished twice, the same
decisions. Real driver processes with the fake trainer (``tests/fakes.py``), SQLite storage."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_locks import FAKES, outcome_of, solo_outcome, write_spec

from maou.sweep.run.faults import ENV, EXIT_CODE, POINTS

pytestmark = pytest.mark.slow
#: Which hit of each point to die at: mid-sweep where a point recurs; copies and decisions first
#: happen in step 2 and at the end of step 1.
HIT = {"enqueue": 3, "ask": 4, "tell": 3, "copy": 1, "decision": 1}


def drive(spec, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    if fault:
        env[ENV] = fault
    return subprocess.run([sys.executable, FAKES, str(spec)], cwd=spec.parent, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_write_point_resumes_to_the_uninterrupted_outcome(tmp_path, point):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "faults", url)
    killed = drive(spec, f"{point}:{HIT[point]}")
    assert killed.returncode == EXIT_CODE, killed.stdout[-2000:] + killed.stderr[-2000:]
    resumed = drive(spec)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert outcome_of(url, "faults") == solo_outcome(tmp_path, "faults")
