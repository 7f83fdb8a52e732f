"""PostgreSQL out of the box: a sweep on a real server, an outage of several seconds survived by
retrying, and the password masked wherever a URL is shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sweep_helpers import SWEEP, run_cli
from test_locks import FAKES, outcome_of, running_trials, solo_outcome, start_driver, wait_for, write_spec

from maou.sweep.storage import mask_url

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-pw"


def test_mask_url():
    assert mask_url(f"postgresql://bob:{PASSWORD}@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url(f"postgresql://bob@/x?host=/tmp&password={PASSWORD}") == \
        "postgresql://bob@/x?host=/tmp&password=***"
    assert mask_url("sqlite:///studies/x.db") == "sqlite:///studies/x.db"


def test_a_database_outage_is_retried_and_the_sweep_finishes(tmp_path, postgres):
    url = postgres.new_database()
    spec = write_spec(tmp_path, "outage", url)
    gate, log = tmp_path / "gate", tmp_path / "driver.err"
    with log.open("w") as stderr:
        driver = start_driver(spec, gate=gate, stderr=stderr)
    wait_for(lambda: running_trials(url, "outage") > 0)
    postgres.stop()
    try:
        gate.touch()  # the trial reports its evaluation into a storage that is down
        wait_for(lambda: "retrying" in log.read_text())
    finally:
        postgres.start()
    out, _ = driver.communicate(timeout=300)
    err = log.read_text()
    assert driver.returncode == 0, out[-2000:] + err[-2000:]
    assert "unreachable" in err and "retrying" in err and PASSWORD not in err + out
    assert outcome_of(url, "outage") == solo_outcome(tmp_path, "outage")


def test_credentials_are_masked_in_headers_titles_and_errors(tmp_path, postgres):
    url = postgres.new_database()
    assert PASSWORD in url
    spec = write_spec(tmp_path, "masked", url)
    run = subprocess.run([sys.executable, FAKES, str(spec)], cwd=spec.parent, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    status = run_cli("status", str(spec))
    assert status.returncode == 0, status.stderr
    for shown in (run.stdout + run.stderr, status.stdout + status.stderr):
        assert PASSWORD not in shown and "***" in shown
    postgres.stop()
    try:
        env = {**os.environ, "MAOU_STORAGE_RETRY_SECONDS": "1", "COLUMNS": "200"}
        down = subprocess.run([SWEEP, "status", str(spec)], cwd=spec.parent, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        postgres.start()
    assert down.returncode == 2 and "unreachable" in down.stderr and "Traceback" not in down.stderr, down.stderr
    assert PASSWORD not in down.stderr and "***" in down.stderr


@pytest.mark.parametrize("refused, words", [
    ("password", 'password authentication failed for user "maou_pw"'),
    ("role", 'role "maou_nobody" does not exist'),
    ("database", 'database "maou_nowhere" does not exist'),
])
def test_a_refused_login_stops_at_once_with_the_servers_words(tmp_path, postgres, refused, words):
    database, query = postgres.new_database().split("@/", 1)[1].split("?", 1)
    if refused == "password":
        postgres.password_role("maou_pw", "the-right-one")
    user, database = {"password": ("maou_pw", database), "role": ("maou_nobody", database),
                      "database": ("postgres", "maou_nowhere")}[refused]
    spec = write_spec(tmp_path, "refused", f"postgresql://{user}:{PASSWORD}@/{database}?{query}")
    env = {**os.environ, "MAOU_STORAGE_RETRY_SECONDS": "600", "COLUMNS": "200"}
    for command in ("run", "status"):
        result = subprocess.run([SWEEP, command, str(spec)], cwd=spec.parent, env=env, capture_output=True, text=True,
                                timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"sweep {command}: error: storage postgresql://{user}:***@/{database}" in lines[0], lines[0]
        assert "refused the connection" in lines[0] and words in lines[0], lines[0]
        shown = result.stdout + result.stderr
        assert "retrying" not in shown and "unreachable" not in shown and PASSWORD not in shown
