"""Several trials at once on this machine: ``k`` worker processes of this driver, each training one
trial at a time, speaking the worker protocol of :mod:`~maou.sweep.run.executors.remote`.

The driver (this process, on its main thread) starts trials with ``RemoteTrials.suggest`` while
fewer than ``k`` are in flight, hands every message to ``RemoteTrials.message`` and each trial's end
to ``RemoteTrials.complete``: the trial recorder stays the only writer, called from this thread only.

* **Workers** are spawned (a fresh interpreter: CUDA-safe, and the driver is their parent), ignore
  SIGINT (Ctrl-C is the driver's alone) and die with the driver, even by SIGKILL: each asks Linux for
  ``PR_SET_PDEATHSIG`` (SIGKILL when the thread that spawned it, the driver's main thread, ends) and
  exits at once if the driver is already gone. Their stdout and stderr go to ``workers.log`` in the
  sweep's runs folder, never across the live display. They live as long as the executor (every step
  of a sweep: each worker maps the datasets once), until :meth:`PoolExecutor.close`.
* **One pipe per worker.** The driver sends a job; the worker sends the messages of
  :func:`~maou.sweep.run.executors.remote.work` and, after each evaluation, waits for the driver's
  answer: the :class:`~maou.trainer.result.Stop` the recorder answered (Optuna's pruner, or any other
  stop) ends the run at that very evaluation, so a trial stops where it would have in process.
* **Ends.** Ctrl-C or SIGTERM (a ``KeyboardInterrupt`` in the driver): the workers are killed and
  the trials in flight marked interrupted (run again on resume). A worker that dies (killed, out of
  memory): its trial runs again from scratch in a new worker, ``max_retries`` times, then FAILs
  with how the worker died.

On one GPU with no ``max_concurrent`` (``auto``), ``k`` is measured when the first step starts
(:meth:`PoolExecutor.probe`): the base configuration trains alone, then as 2, 4, ... copies at once
(each a :func:`~maou.sweep.run.measure.short_training` in its worker), each copy timed over the
window they all train in and its peak device memory read; the ``k`` with the most samples per second
that fits the free memory wins (:func:`~maou.sweep.run.cost.choose_concurrency`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from maou.sweep.run.cost import HEADROOM, WITHIN, Measurement, choose_concurrency, window_rate
from maou.sweep.run.executors.remote import DATASET, FINAL, JOB, RECORD, RemoteTrials, placement, work
from maou.sweep.run.job import Job, TrainFn
from maou.sweep.run.measure import ShortTraining, short_training
from maou.sweep.run.step import StepRun
from maou.trainer.config import Budget, TrainConfig
from maou.trainer.result import Stop

#: Where the workers' stdout and stderr go, in the sweep's runs folder.
LOG_NAME = "workers.log"
_PR_SET_PDEATHSIG = 1

#: Seconds each measured run of the probe trains (one copy alone; copies at once take longer).
PROBE_SECONDS = 5.0
#: Optimizer steps of a new probe worker's warm-up (CUDA context, datasets, kernel choice).
WARMUP_STEPS = 10
#: Most copies the probe tries.
PROBE_MAX = 8


# ----------------------------------------------------------------------------- the worker's side
def _die_with_driver(driver: int) -> None:
    """SIGKILL this worker when the driver's spawning thread ends (Linux); exit now if it is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != driver:
        os._exit(1)


def _serve(conn: Connection, train: TrainFn | None, driver: int, log: str | None) -> None:
    """A worker's life: what the driver sends, one item at a time, until it says stop or is gone."""
    _die_with_driver(driver)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item[0] == "trial":
            _, trial_id, job, offer = item
            _trial(conn, trial_id, job, offer, train)
        elif item[0] == "probe":  # a short training measured: a ShortTraining, or why not (a traceback)
            try:
                result: ShortTraining | str = short_training(item[1])
            except Exception:  # noqa: BLE001 - the driver gives the probe up, saying why
                result = traceback.format_exc()
            conn.send(("probe", result))
        else:
            return


def _trial(conn: Connection, trial_id: str, job: Job, offer: Any, train: TrainFn | None) -> None:
    def emit(message: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        conn.send(("message", trial_id, message))

    def answer() -> Stop | None:
        _, _, stop = conn.recv()  # ("answer", trial_id, stop): the one thing sent while a trial runs
        return stop

    work(job, emit, train, {**placement(), "pid": os.getpid()}, offer, answer=answer)


# ----------------------------------------------------------------------------- the driver's side
@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker is spawned: the ignore is inherited, so Ctrl-C never reaches a
    worker, not even while it starts (only the main thread may change a signal's handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


class _Worker:
    """One worker process, the driver's end of its pipe, and the trial it trains."""

    def __init__(self, context: Any, train: TrainFn | None, log: str | None) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, train, os.getpid(), log),
                                       name="maou-sweep-worker")
        with _sigint_ignored():
            self.process.start()
        theirs.close()
        self.trial: str | None = None
        #: What the trial's worker was sent (a retry sends it again).
        self.sent: tuple[Any, ...] | None = None
        self.warm = False

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(10)
        self.conn.close()


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def probe_limit(threads: int) -> int:
    """The most copies :meth:`PoolExecutor.probe` tries of a config of ``threads`` threads: the cores
    over its threads, at most :data:`PROBE_MAX`."""
    from maou.sweep.run.executors import cores

    return max(1, min(PROBE_MAX, cores() // max(1, threads)))


def probe_seconds(threads: int) -> float:
    """About how long :meth:`PoolExecutor.probe` takes for a config of ``threads`` threads: alone to
    size it, then 1, 2, 4, ... copies, each for about :data:`PROBE_SECONDS`."""
    return (2 + int(math.log2(probe_limit(threads)))) * PROBE_SECONDS


def _on_gpu(config: TrainConfig) -> bool:
    if config.device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


class PoolExecutor:
    """Up to ``concurrency`` trials at once in worker processes (None: measured by :meth:`probe` when
    the first step starts)."""

    def __init__(self, concurrency: int | None, train: TrainFn | None = None, max_retries: int = 1,
                 probe_seconds: float = PROBE_SECONDS) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        #: The training function; tests pass a fake trainer (picklable: the workers import it).
        self.train = train
        self.max_retries = max_retries
        self.probe_seconds = probe_seconds
        #: What the probe found, in one line (printed when it ran), and what it measured.
        self.probed: str | None = None
        self.measured: list[Measurement] = []
        self.workers: list[_Worker] = []
        self.context = multiprocessing.get_context("spawn")
        self.log: str | None = None
        self._ids = itertools.count()
        self._failures: dict[str, int] = {}
        atexit.register(self.close)

    @classmethod
    def from_section(cls, config: Any) -> PoolExecutor:
        return cls(config.max_concurrent, max_retries=config.max_retries)

    def __enter__(self) -> PoolExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]

    # ------------------------------------------------------------------ the workers
    def close(self) -> None:
        """Idle workers told to stop, the others (and the late) killed."""
        for worker in self.workers:
            if worker.trial is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(("stop",))
        for worker in self.workers:
            if worker.trial is None:
                worker.process.join(10)
            worker.kill()
        self.workers.clear()
        atexit.unregister(self.close)

    def _kill_all(self) -> None:
        for worker in self.workers:  # every one signalled first, then each reaped
            with contextlib.suppress(OSError, ValueError):
                worker.process.kill()
        for worker in self.workers:
            worker.kill()
        self.workers.clear()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.context, self.train, self.log)
        self.workers.append(worker)
        return worker

    def _idle(self) -> _Worker:
        """An idle live worker, or a new one."""
        for worker in list(self.workers):
            if worker.trial is None:
                if worker.process.is_alive():
                    return worker
                self.workers.remove(worker)
                worker.kill()
        return self._spawn()

    # ------------------------------------------------------------------ a step
    def run(self, step: StepRun) -> None:
        runs = step.context.spec.runs_path
        runs.mkdir(parents=True, exist_ok=True)
        self.log = str((runs / LOG_NAME).resolve())
        state = RemoteTrials(step, "local", threads=None, on_gpu=_on_gpu(step.context.base))
        try:
            if self.concurrency is None:
                self.concurrency, self.probed = self.probe(state.worker_config(step.context.base))
                print(self.probed, flush=True)
            self._run(state, self.concurrency)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: no worker outlives it, the trials run again on resume
            self._kill_all()
            state.interrupt_all()
            raise
        except BaseException:  # LostLock (nothing more is written), a bug: the workers go
            self._kill_all()
            raise

    def _run(self, state: RemoteTrials, k: int) -> None:
        while True:
            while sum(w.trial is not None for w in self.workers) < k:
                trial_id = str(next(self._ids))
                config = state.suggest(trial_id)
                if config is None:
                    break
                self._assign(state, self._idle(), trial_id, ("trial", trial_id, config[JOB], config[DATASET]))
            busy = [w for w in self.workers if w.trial is not None]
            if not busy:
                return  # nothing in flight and nothing to start: the step is done
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._heard(state, worker)

    def _assign(self, state: RemoteTrials, worker: _Worker, trial_id: str, item: tuple[Any, ...]) -> None:
        worker.trial, worker.sent = trial_id, item
        try:
            worker.conn.send(item)
        except OSError:
            self._lost(state, worker)

    def _heard(self, state: RemoteTrials, worker: _Worker) -> None:
        """What a busy worker sent; its death when it died. (Only the pipe's errors are the worker's:
        whatever the recorder raises, the storage's errors and ``LostLock`` among them, goes up.)"""
        gone = False
        while worker.trial is not None:
            try:
                if not worker.conn.poll():
                    break
                _, trial_id, message = worker.conn.recv()
            except (EOFError, OSError):  # the worker is gone, or going
                gone = True
                break
            stop = state.message(trial_id, message)
            if RECORD in message:
                with contextlib.suppress(OSError):  # gone: its death is heard next
                    worker.conn.send(("answer", trial_id, state.stop_of(trial_id) if stop else None))
            elif FINAL in message:
                worker.trial = worker.sent = None
                self._failures.pop(trial_id, None)
                state.complete(trial_id, error=False)
        if worker.trial is not None and (gone or not worker.process.is_alive()):
            self._lost(state, worker)

    def _lost(self, state: RemoteTrials, worker: _Worker) -> None:
        """A worker died with a trial: the trial runs again from scratch in a new worker, or FAILs."""
        worker.process.join(10)
        self.workers.remove(worker)
        worker.kill()
        trial_id, sent = worker.trial, worker.sent
        if trial_id is None or sent is None:
            return
        failures = self._failures[trial_id] = self._failures.get(trial_id, 0) + 1
        state.error(trial_id, f"local worker (pid {worker.process.pid}) died: {_died(worker.process.exitcode)}"
                              f" (its output: {self.log})", failures)
        if failures <= self.max_retries:
            self._assign(state, self._spawn(), trial_id, sent)
        else:
            self._failures.pop(trial_id, None)
            state.complete(trial_id, error=True)

    # ------------------------------------------------------------------ the GPU probe
    def probe(self, base: TrainConfig, limit: int | None = None) -> tuple[int, str]:
        """The trials at once for ``base`` here, and the line that says why: it trains alone, then 2,
        4, ... copies at once (each new worker warmed up first; the copies start together), until the
        memory of twice as many would not fit, adding copies gains too little, or ``limit`` (default
        :func:`probe_limit`: the cores over the config's threads, at most :data:`PROBE_MAX`). Any
        failure: one at a time."""
        limit = limit or probe_limit(base.threads)
        warmup = probe = dataclasses.replace(base, eval_at_start=False, init_from=None,
                                             budget=Budget(max_steps=WARMUP_STEPS, eval_every=WARMUP_STEPS))
        measured: list[Measurement] = []
        self.measured = measured
        free: int | None = None
        try:
            k = 1
            while k <= limit:
                workers = [w for w in self.workers if w.trial is None][:k]
                workers += [self._spawn() for _ in range(k - len(workers))]
                self._probe_round([w for w in workers if not w.warm], warmup)
                for w in workers:
                    w.warm = True
                if k == 1:  # as long as the probe runs alone for PROBE_SECONDS
                    (alone,) = self._probe_round(workers, probe)
                    n = int(min(100_000, max(20, self.probe_seconds / max(alone.step_s, 1e-6))))
                    probe = dataclasses.replace(probe, budget=Budget(max_steps=n, eval_every=n))
                results = self._probe_round(workers, probe)
                if k == 1 and results[0].free_bytes is not None:
                    free = results[0].free_bytes  # this worker's own context counted free
                measured.append(Measurement(k, window_rate([r.stamps for r in results], probe.batch_size),
                                            sum(r.peak_bytes for r in results)))
                last = measured[-1]
                if len(measured) > 1 and last.samples_per_s < (1 + WITHIN) * measured[-2].samples_per_s:
                    break
                if free is not None and 2 * last.peak_bytes > HEADROOM * free:
                    break
                k *= 2
        except Exception as exc:  # noqa: BLE001 - a failed probe is no reason to fail the sweep
            self._kill_all()
            return 1, f"executor: local, one trial at a time (the probe failed: {exc})"
        chosen, reason = choose_concurrency(measured, free)
        for worker in self.workers[chosen:]:  # idle workers beyond what runs
            with contextlib.suppress(OSError):
                worker.conn.send(("stop",))
            worker.kill()
        del self.workers[chosen:]
        return chosen, f"executor: local, {chosen} trial{'s' if chosen != 1 else ''} at once ({reason})"

    def _probe_round(self, workers: list[_Worker], config: TrainConfig) -> list[ShortTraining]:
        """``config`` trained by ``workers`` at once (sent together, answers in order)."""
        for worker in workers:
            worker.conn.send(("probe", config))
        results = []
        for worker in workers:
            _, result = worker.conn.recv()
            if isinstance(result, str):
                raise RuntimeError(result.strip().splitlines()[-1])
            if not result.stamps or not all(math.isfinite(t) for t in result.stamps):
                raise RuntimeError("a probe run took no step")
            results.append(result)
        return results


__all__ = ["LOG_NAME", "PoolExecutor", "probe_limit", "probe_seconds"]
