"""`sweep dashboard` over real HTTP: the sweeps' steps listed without their lock studies, read-only
unless --allow-writes, and a warning when other machines can reach it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import SWEEP, dashboard_studies, free_port

from maou.cli.results import dashboard_server
from maou.sweep.results.dashboard import exposure_warning, is_loopback
from maou.sweep.storage import open_storage

STEPS = ["mine/01-baseline", "mine/02-lr", "other/01-baseline"]
LOCKS = ["mine@lock", "other@lock"]


def make_storage(folder: Path) -> str:
    """Two sweeps' step studies and lock studies in one SQLite storage, a trial in each."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder}/studies.db"
    for name in STEPS + LOCKS:
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"seed": 0}))
    return url


@contextmanager
def serving(url: str, allow_writes: bool) -> Iterator[str]:
    """The dashboard on ``url`` served by a real HTTP server in this process; yields its address."""
    server = dashboard_server(open_storage(url, create=False), "127.0.0.1", 0, allow_writes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def read_only_dashboard(tmp_path_factory):
    url = make_storage(tmp_path_factory.mktemp("read-only"))
    with serving(url, allow_writes=False) as base:
        yield base, url


@pytest.fixture(scope="module")
def writable_dashboard(tmp_path_factory):
    url = make_storage(tmp_path_factory.mktemp("writable"))
    with serving(url, allow_writes=True) as base:
        yield base, url


def call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def names_in(url: str) -> list[str]:
    return sorted(optuna.get_all_study_names(url))


def study_ids(url: str) -> dict[str, int]:
    return {s.study_name: s._study_id for s in optuna.get_all_study_summaries(url, include_best_trial=False)}


def test_the_study_list_leaves_out_lock_studies_the_storage_holds(read_only_dashboard):
    base, url = read_only_dashboard
    status, body = call(f"{base}/api/studies")  # what the dashboard's study list fetches
    assert status == 200
    assert sorted(s["study_name"] for s in json.loads(body)["study_summaries"]) == STEPS  # other sweeps too
    assert set(LOCKS) <= set(names_in(url))
    ids = study_ids(url)
    for lock in LOCKS:  # nor found by id
        assert call(f"{base}/api/studies/{ids[lock]}")[0] == 404
        assert call(f"{base}/api/studies/{ids[lock]}/param_importances")[0] == 404
    status, body = call(f"{base}/api/studies/{ids['mine/02-lr']}")
    assert status == 200 and json.loads(body)["name"] == "mine/02-lr"


def test_writes_are_refused_by_default_and_nothing_changes(read_only_dashboard):
    base, url = read_only_dashboard
    ids = study_ids(url)
    step, lock = ids["mine/02-lr"], ids["mine@lock"]
    trial_id = optuna.load_study(study_name="mine/02-lr", storage=url).trials[0]._trial_id
    for method, path, body in [("DELETE", f"/api/studies/{step}", None),
                               ("DELETE", f"/api/studies/{lock}", None),
                               ("POST", f"/api/studies/{step}/rename", {"study_name": "renamed"}),
                               ("PUT", f"/api/studies/{step}/note", {"version": 1, "body": "x"}),
                               ("POST", "/api/studies", {"study_name": "new", "directions": ["maximize"]}),
                               ("POST", f"/api/trials/{trial_id}/user-attrs", {"user_attrs": {"seed": 9}}),
                               ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
                               ("PATCH", f"/api/studies/{step}", {})]:
        status, answer = call(base + path, method, body)
        assert status == 403, (method, path, status)
        assert "--allow-writes" in json.loads(answer)["reason"]
    assert names_in(url) == sorted(STEPS + LOCKS)
    trial = optuna.load_study(study_name="mine/02-lr", storage=url).trials[0]
    assert trial.user_attrs == {"seed": 0} and trial.state == optuna.trial.TrialState.COMPLETE
    # a POST that stores nothing still reaches the dashboard (it has no LLM to ask: 400, not 403)
    assert call(f"{base}/api/llm/trial_filter_query", "POST", {"user_query": "x"})[0] == 400


def test_allow_writes_deletes_a_step_study_but_never_a_lock(writable_dashboard):
    base, url = writable_dashboard
    ids = study_ids(url)
    assert call(f"{base}/api/studies/{ids['mine/02-lr']}", "DELETE")[0] == 204
    assert "mine/02-lr" not in names_in(url)
    assert call(f"{base}/api/studies/{ids['mine@lock']}", "DELETE")[0] == 404  # not there, as the dashboard sees it
    assert "mine@lock" in names_in(url)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "LOCALHOST", "::1", "[::1]",
                                  "::ffff:127.0.0.1"])
def test_no_warning_on_loopback(host):
    assert is_loopback(host) and exposure_warning(host, allow_writes=True) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "fe80::1", "myhost.lan"])
def test_a_warning_where_other_machines_can_connect(host):
    assert not is_loopback(host)
    warning = exposure_warning(host, allow_writes=False)
    shown = f"[{host}]" if ":" in host else host
    assert warning is not None and warning.startswith(f"warning: serving on {shown}: ") and "\n" not in warning
    assert "writes" not in warning
    assert exposure_warning(host, allow_writes=True).endswith(" and writes are allowed")
    if host in ("0.0.0.0", "::"):
        assert "every network interface can reach this dashboard" in warning


def test_the_cli_warns_on_0_0_0_0_and_not_on_127_0_0_1(tmp_path):
    url = make_storage(tmp_path / "studies")
    spec = tmp_path / "mine.yaml"
    spec.write_text(yaml.safe_dump({"name": "mine", "stage": 1, "seeds": 1, "storage": url,
                                    "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.1]}}],
                                    "base": {"model": {"blocks": 1, "channels": 8}}}))
    servers = {}
    for host in ("0.0.0.0", "127.0.0.1"):  # both start at once: one wait for the two
        port = free_port()
        servers[host] = port, subprocess.Popen(
            [SWEEP, "dashboard", str(spec), "--host", host, "--port", str(port), "--allow-writes"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    errors = {}
    for host, (port, server) in servers.items():
        try:
            body = dashboard_studies(port)  # 0.0.0.0 answers on 127.0.0.1 too
            assert body is not None, "the dashboard did not answer"
            assert sorted(s["study_name"] for s in body["study_summaries"]) == STEPS
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            _, errors[host] = server.communicate(timeout=300)
    assert ("warning: serving on 0.0.0.0: every network interface can reach this dashboard and writes are allowed"
            in errors["0.0.0.0"].splitlines())
    assert "warning" not in errors["127.0.0.1"] and "Traceback" not in errors["127.0.0.1"]
