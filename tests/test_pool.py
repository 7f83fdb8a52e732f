"""Several trials at once on one machine (the local executor's worker pool): the same trials, values
and decisions as one at a time, a driver's stop reaching a running worker, a dead worker's trial run
again, Ctrl-C/SIGTERM and SIGKILL of the driver leaving no worker behind; and what ``auto`` picks.

Workers are real spawned processes; the trainer is the fake one (``tests/fakes.py``, which the
workers import), or the real one on a tiny Stage 1 config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest
import yaml
from fakes import DiesOnce, FakeTrainer, lr_batch_score, slow_lr_is_worse
from optuna.trial import TrialState
from test_locks import outcome_of, running_trials, solo_outcome, start_driver, wait_for, write_spec

from maou.strict import from_dict
from maou.sweep.run.cost import choose_concurrency, window_rate
from maou.sweep.run.executors import choose, make_executor, resolve_auto
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.executors.pool import PoolExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.spec import ExecutorSection, SweepSpec

GIB = 2**30


#: Trial by trial the same as one at a time: racing off. Racing decides as results arrive, so trials
#: at once (a configuration's seeds side by side) stop other trials than one at a time does; its
#: decisions are compared in tests/test_racing.py.
EXHAUSTIVE = {"racing": {"enabled": False}}


def spec_at(tmp_path: Path, name: str, **changes) -> SweepSpec:
    changes = {**EXHAUSTIVE, **changes}
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path}/{name}.db"
    return from_dict(SweepSpec, yaml.safe_load(write_spec(tmp_path, name, url, **changes).read_text()))


def trials_of(spec: SweepSpec) -> list[list[optuna.trial.FrozenTrial]]:
    return [optuna.load_study(study_name=spec.study_name(i), storage=spec.storage_url).get_trials()
            for i in range(len(spec.steps))]


# --- the same sweep, one at a time and two at once ------------------------------------------------

def test_two_at_once_records_the_trials_values_and_decisions_of_one_at_a_time(tmp_path):
    alone = spec_at(tmp_path / "alone", "same")
    run_sweep(alone, executor=LocalExecutor(FakeTrainer(lr_batch_score)))
    pooled = spec_at(tmp_path / "pooled", "same")
    with PoolExecutor(2, train=FakeTrainer(lr_batch_score)) as pool:
        run_sweep(pooled, executor=pool)
        workers = pool.pids()
        assert len(workers) == 2 and os.getpid() not in workers
    assert outcome_of(pooled.storage_url, "same") == outcome_of(alone.storage_url, "same")
    first = trials_of(pooled)[0]  # two seeds of the base: both started before either finished
    assert len(first) == 2 and max(t.datetime_start for t in first) < min(t.datetime_complete for t in first)
    assert {t.user_attrs["executor"] for step in trials_of(pooled) for t in step} == {"local"}
    for pid in workers:  # closed with the executor
        wait_for(lambda pid=pid: not alive(pid), timeout=300)


def test_a_stop_of_optunas_pruner_ends_the_worker_at_that_evaluation(tmp_path):
    pruning = {"optuna": {"kind": "median", "n_startup_trials": 2}}  # the carried trials: then it cuts
    steps = [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001]}}]
    alone = spec_at(tmp_path / "alone", "pruned", pruning=pruning, steps=steps)
    run_sweep(alone, executor=LocalExecutor(FakeTrainer(slow_lr_is_worse, delay_s=0.05)))
    pooled = spec_at(tmp_path / "pooled", "pruned", pruning=pruning, steps=steps)
    with PoolExecutor(2, train=FakeTrainer(slow_lr_is_worse, delay_s=0.05)) as pool:
        run_sweep(pooled, executor=pool)
    assert outcome_of(pooled.storage_url, "pruned") == outcome_of(alone.storage_url, "pruned")
    pruned = [t for t in trials_of(pooled)[1] if t.state == TrialState.PRUNED]
    assert len(pruned) == 2  # both seeds of lr 0.0001
    for trial in pruned:
        assert trial.params["optim.lr"] == 0.0001
        assert trial.user_attrs["prune_reason"] == "optuna_pruner" and trial.user_attrs["prune_step"] == 10
        # the worker's own result: it stopped at the evaluation the stop answered, and said so
        assert trial.user_attrs["steps_done"] == 10 and trial.user_attrs["stop_reason"] == "optuna_pruner"
        assert list(trial.intermediate_values) == [10]
        assert trial.user_attrs["curves"]["step"] == [10]


def test_a_worker_that_dies_has_its_trial_trained_again_in_a_new_one(tmp_path):
    alone = spec_at(tmp_path / "alone", "dies", steps=[{"name": "baseline"}])
    run_sweep(alone, executor=LocalExecutor(FakeTrainer(lr_batch_score)))
    pooled = spec_at(tmp_path / "pooled", "dies", steps=[{"name": "baseline"}])
    with PoolExecutor(2, train=DiesOnce(tmp_path / "died")) as pool:
        run_sweep(pooled, executor=pool)
    assert (tmp_path / "died").exists()
    assert outcome_of(pooled.storage_url, "dies") == outcome_of(alone.storage_url, "dies")
    (retried,) = [t for t in trials_of(pooled)[0] if t.user_attrs["seed"] == 0]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["local_failures"] == 1


def test_a_worker_that_dies_past_its_retries_fails_its_trial_saying_how(tmp_path):
    pooled = spec_at(tmp_path, "dead", steps=[{"name": "baseline"}], seeds=1)
    with PoolExecutor(2, train=DiesOnce(tmp_path / "died"), max_retries=0) as pool:
        with pytest.raises(Exception, match="1 of 1"):  # the step cannot decide without its trial
            run_sweep(pooled, executor=pool)
    (trial,) = trials_of(pooled)[0]
    assert trial.state == TrialState.FAIL and "killed by SIGKILL" in trial.user_attrs["error"]


def test_real_training_two_at_once_equals_one_at_a_time(tmp_path):
    """The real trainer in workers (Stage 1's synthetic rows, a tiny model): values bit for bit."""
    tiny = {"base": {"model": {"arch": "resnet", "blocks": 1, "channels": 8}, "batch_size": 32, "threads": 1},
            "budget": {"max_steps": 10, "eval_every": 5}, "steps": [{"name": "baseline"}]}
    alone = spec_at(tmp_path / "alone", "real", **tiny)
    run_sweep(alone, executor=LocalExecutor())
    pooled = spec_at(tmp_path / "pooled", "real", **tiny)
    with PoolExecutor(2) as pool:
        run_sweep(pooled, executor=pool)
    table = outcome_of(pooled.storage_url, "real")
    assert table == outcome_of(alone.storage_url, "real") and len(table["trials"]) == 2


# --- the driver's end: SIGTERM, SIGKILL -----------------------------------------------------------

def children(pid: int) -> set[int]:
    """The live children of ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and int(stat[1]) == pid and stat[0] != "Z":
                found.add(int(entry))
    return found


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # state, ppid, ...


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may wait for a lazy init)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def workers_of(pid: int) -> set[int]:
    def cmdline(child: int) -> str:
        try:
            return Path(f"/proc/{child}/cmdline").read_text()
        except OSError:
            return ""
    return {c for c in children(pid) if "spawn_main" in cmdline(c)}


@pytest.mark.slow
def test_sigterm_with_two_at_once_leaves_no_running_trial_nor_worker_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "term", url, executor={"max_concurrent": 2}, **EXHAUSTIVE)
    driver = start_driver(spec, gate=tmp_path / "never")  # both trials stay running
    wait_for(lambda: running_trials(url, "term") == 2)
    wait_for(lambda: len(workers_of(driver.pid)) == 2)
    workers = workers_of(driver.pid)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 143, out[-2000:] + err[-2000:]
    assert "terminated" in err and "again to resume" in err and "Traceback" not in err
    assert "executor: local, 2 trials at once (executor.max_concurrent)" in out
    assert running_trials(url, "term") == 0
    assert not any(alive(pid) for pid in workers)
    failed = [t for s in optuna.get_all_study_summaries(url) if s.study_name.startswith("term/")
              for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials()
              if t.state == TrialState.FAIL]
    assert len(failed) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in failed)
    resumed = start_driver(spec)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert outcome_of(url, "term") == solo_outcome(tmp_path, "term", **EXHAUSTIVE)


@pytest.mark.slow
def test_sigkill_of_the_driver_takes_its_workers_with_it(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "killed", url, executor={"max_concurrent": 2}, **EXHAUSTIVE)
    driver = start_driver(spec, gate=tmp_path / "never")
    wait_for(lambda: running_trials(url, "killed") == 2)
    wait_for(lambda: len(workers_of(driver.pid)) == 2)
    workers = workers_of(driver.pid)
    driver.kill()
    driver.communicate(timeout=300)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=300)


# --- what auto picks ------------------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "threads", "k", "line"), [
    (2, 1, 2, "executor: local, 2 trials at once (2 cores, threads 1 per trial)"),
    (2, 2, 1, "executor: local, one trial at a time (2 cores, threads 2 per trial)"),
    (16, 3, 5, "executor: local, 5 trials at once (16 cores, threads 3 per trial)"),
    (1, 1, 1, "executor: local, one trial at a time (1 core, threads 1 per trial)"),
    (8, 0, 1, "executor: local, one trial at a time (8 cores, threads 0: every core per trial)"),
])
def test_auto_on_a_cpu_runs_as_many_trials_at_once_as_the_cores_hold(cores, threads, k, line, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    choice = choose(ExecutorSection(), threads=threads, gpus=0, cpu_cores=cores)
    assert (choice.section.kind, choice.section.max_concurrent, choice.probe) == ("local", k, False)
    assert choice.line == line
    assert resolve_auto(ExecutorSection(), gpus=0, threads=threads, cpu_cores=cores) == choice.section


def test_auto_keeps_a_spec_s_max_concurrent_and_measures_on_one_gpu(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    given = choose(ExecutorSection(max_concurrent=3), gpus=0, cpu_cores=2)
    assert given.section.max_concurrent == 3 and given.line.endswith("3 trials at once (executor.max_concurrent)")
    gpu = choose(ExecutorSection(), gpus=1, cpu_cores=16)
    assert gpu.probe and gpu.section.kind == "local" and gpu.section.max_concurrent is None
    assert gpu.line == "executor: local, trials at once measured on the GPU when the first step starts (1 GPU)"
    whole = choose(ExecutorSection(gpus_per_trial=1.0), gpus=1, cpu_cores=16)  # a trial takes the GPU
    assert not whole.probe and whole.section.max_concurrent == 1
    assert choose(ExecutorSection(), gpus=2).section.kind == "ray"  # several GPUs: Ray, as before
    assert choose(ExecutorSection(kind="local"), gpus=0, cpu_cores=8).line == \
        "executor: local, one trial at a time (executor.kind local)"


def test_make_executor_builds_a_pool_for_more_than_one_at_once(monkeypatch):
    import maou.sweep.run.executors as executors

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(executors, "visible_gpus", lambda: 0)
    monkeypatch.setattr(executors, "cores", lambda: 4)
    pool = make_executor(ExecutorSection(), threads=2)
    assert isinstance(pool, PoolExecutor) and pool.concurrency == 2
    pool.close()
    assert isinstance(make_executor(ExecutorSection(), threads=4), LocalExecutor)
    assert isinstance(make_executor(ExecutorSection(kind="local")), LocalExecutor)
    monkeypatch.setattr(executors, "visible_gpus", lambda: 1)
    probing = make_executor(ExecutorSection())
    assert isinstance(probing, PoolExecutor) and probing.concurrency is None
    probing.close()


# --- the GPU probe's choice, from recorded measurements -------------------------------------------

#: An 80 GiB GPU, a small model: (copies at once, samples/s together, peak memory together).
SMALL_MODEL = [(1, 9000.0, int(2.5 * GIB)), (2, 16500.0, 5 * GIB), (4, 24000.0, 10 * GIB), (8, 24500.0, 20 * GIB)]


def test_the_probe_keeps_the_fewest_copies_within_reach_of_the_most_samples_per_second():
    k, reason = choose_concurrency(SMALL_MODEL, free_bytes=78 * GIB)
    assert k == 4  # 8 at once adds 2%: not worth twice the memory
    assert reason == ("probe: 4 at once train 24,000 samples/s together, 1 alone 9,000; "
                      "peak 10.0 GiB of 78.0 GiB free")
    assert choose_concurrency(SMALL_MODEL[:2], free_bytes=78 * GIB)[0] == 2


def test_the_probe_never_chooses_what_does_not_fit_the_free_memory():
    big = [(1, 1000.0, 30 * GIB), (2, 1500.0, 60 * GIB), (4, 1900.0, 120 * GIB)]
    k, reason = choose_concurrency(big, free_bytes=78 * GIB)
    assert k == 2 and reason.endswith("4 at once would not fit")
    k, _ = choose_concurrency(big, free_bytes=40 * GIB)  # one always fits: it is what runs anyway
    assert k == 1
    k, _ = choose_concurrency(big, free_bytes=None)  # no device memory to mind
    assert k == 4


def test_a_gpu_that_one_trial_saturates_runs_one_at_a_time():
    saturated = [(1, 20000.0, 3 * GIB), (2, 20300.0, 6 * GIB)]
    assert choose_concurrency(saturated, free_bytes=78 * GIB)[0] == 1
    assert choose_concurrency([], free_bytes=78 * GIB) == (1, "nothing measured")


def test_the_samples_per_second_of_copies_at_once_count_only_their_common_window():
    one = [0.0, 1.0, 2.0, 3.0, 4.0]  # a step a second
    late = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]  # starts late, two steps a second
    # common window (2, 4]: `one` steps at 3 and 4, `late` at 2.5 ... 4: 2 + 4 steps in 2 s, batch 10
    assert window_rate([one, late], 10) == pytest.approx(30.0)
    assert window_rate([one], 10) == pytest.approx(10.0)
    assert window_rate([[0.0, 1.0], [5.0, 6.0]], 10) == pytest.approx(20.0)  # apart: each alone, added
    assert window_rate([[1.0]], 10) == 0.0


@pytest.mark.slow
def test_the_probe_measures_copies_at_once_on_this_machine(tmp_path):
    """The probe's mechanics on a CPU (no device memory): a tiny Stage 1 config alone, then two at
    once in warmed-up workers; it picks one of them and says why."""
    from maou.trainer.config import train_config_from_dict

    config = train_config_from_dict({"stage": 1, "model": {"arch": "resnet", "blocks": 1, "channels": 8},
                                     "batch_size": 32, "threads": 1, "device": "cpu"})
    with PoolExecutor(None, probe_seconds=0.5) as pool:
        k, line = pool.probe(config, limit=2)
        # no device memory and 2 allowed: alone, then two at once, and the rule picks from those figures
        assert [m.k for m in pool.measured] == [1, 2]
        chosen, reason = choose_concurrency(pool.measured, None)
        assert k == chosen and len(pool.workers) == chosen
        assert line == f"executor: local, {chosen} trial{'s' if chosen != 1 else ''} at once ({reason})"
