"""Fake trainers for sweep tests that need no training: metrics are known functions of the
config and seed. ``python tests/fakes.py SPEC.yaml`` runs a whole sweep with one, as a separate
driver process (for lock, concurrency, signal and crash tests)."""

from __future__ import annotations

import math
import sys
import time
import zlib

from maou.trainer.result import TrainResult


def seed_noise(config) -> float:
    """A seed's effect, in [-2, 2]: shared by every configuration (``seed % 3 - 1``) plus a part
    of its own (a stable hash of the configuration and the seed), as real seed noise has both."""
    own = zlib.crc32(f"{config.optim.lr}|{config.batch_size}|{config.seed}".encode()) % 5
    return (config.seed % 3 - 1) + (own - 2) / 2


#: The losses of a run that ``explode_when`` picks, from step 20 on (a diverged run).
DIVERGED_LOSS = 2021.0


class FakeTrainer:
    """Stands in for training: accuracy is a known function of the config plus seed noise."""

    def __init__(self, score, noise=0.01, nan_when=None, untrained=None, delay_s=0.0, explode_when=None,
                 fail_when=None, gate=None, gate_after=0, gate_seed=None):
        self.score, self.noise, self.nan_when, self.calls = score, noise, nan_when, []
        self.delay_s = delay_s  # seconds before each evaluation (so that runs overlap in time)
        #: a file every evaluation waits for (a test opens it when it has done what it must do while
        #: a trial is running): a barrier, not a guess at how long is long enough
        self.gate = gate
        self.gate_after = gate_after  # trainings that run before the gate applies
        self.gate_seed = gate_seed  # only trainings of this seed wait at the gate (None: every one)
        self.untrained = untrained  # config -> the step-0 value (the trainer's eval_at_start)
        self.explode_when = explode_when  # config -> its losses diverge to DIVERGED_LOSS at step 20
        self.fail_when = fail_when  # config -> the training raises (a failed trial)

    def __call__(self, config, report, checkpoint_dir, dataset=None):
        self.calls.append(config)
        if self.fail_when and self.fail_when(config):
            raise RuntimeError(f"fake failure: seed {config.seed} out of memory")
        target = self.score(config) + self.noise * seed_noise(config)
        history, stop = [], None
        if self.untrained is not None:
            value = self.untrained(config)
            history.append((0, {"val_accuracy": value, "val_loss": 1 - value}))
            stop = report(0, history[-1][1])
        for step in (10, 20, 30, 40):
            if stop:
                break
            time.sleep(self.delay_s)
            if len(self.calls) > self.gate_after and self.gate_seed in (None, config.seed):
                wait_for_gate(self.gate)
            value = target * step / 40
            metrics = {"val_accuracy": value, "val_loss": 1 - value, "train_loss": 1 - value}
            if self.nan_when and self.nan_when(config):
                metrics = {"val_accuracy": value, "val_loss": math.nan, "train_loss": math.nan}
            if self.explode_when and self.explode_when(config) and step >= 20:
                metrics = {"val_accuracy": 0.0, "val_loss": DIVERGED_LOSS, "train_loss": DIVERGED_LOSS}
            history.append((step, metrics))
            stop = report(step, metrics)
            if stop:
                break
        return TrainResult(stage=config.stage, final_metrics=history[-1][1], best_metrics=history[-1][1],
                           best_step=history[-1][0], steps_done=history[-1][0], max_steps=40, stop=stop,
                           history=history)


#: The environment variables that give ``fakes.py``'s trainer its gate, the trainings before it
#: applies, and the one seed it applies to.
GATE, GATE_AFTER, GATE_SEED = "MAOU_FAKE_GATE", "MAOU_FAKE_GATE_AFTER", "MAOU_FAKE_GATE_SEED"


def wait_for_gate(gate, timeout_s=300.0):
    """Return once the file ``gate`` exists (None: at once)."""
    import os

    deadline = time.monotonic() + timeout_s
    while gate is not None and not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened the gate {gate}")
        time.sleep(0.005)


def lr_batch_score(config):
    score = 0.90
    if config.optim.lr == 0.01:
        score += 0.05  # clearly better than the seed noise
    if config.batch_size == 128:
        score += 0.001  # better on the mean, but well inside the seed noise
    return score


def slow_lr_is_worse(config):
    """lr 0.0001 far below the base (Optuna's median pruner cuts it at its first evaluation), lr
    0.01 well above it."""
    return {0.0001: 0.5, 0.01: 0.95}.get(config.optim.lr, 0.9)


def one_lr_better_one_worse(config):
    """lr 0.01 clearly better than the base, 0.002 inside the seed noise, 1e-5 clearly worse."""
    return {1e-5: 0.70, 0.002: 0.901, 0.01: 0.95}.get(config.optim.lr, 0.90)


class DiesOnce(FakeTrainer):
    """A fake trainer whose worker process dies (SIGKILL) in the first training of seed 0, once per
    ``marker`` file: the executor's retry trains it in a new worker."""

    def __init__(self, marker, **kwargs):
        super().__init__(lr_batch_score, **kwargs)
        self.marker = str(marker)

    def __call__(self, config, report, checkpoint_dir, dataset=None):
        import os
        import signal

        if config.seed == 0 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(config, report, checkpoint_dir)


class Lockstep(FakeTrainer):
    """A fake trainer whose runs of one configuration evaluate in step, as seeds trained side by side
    on equal hardware do: before reporting an evaluation, a run waits until each other seed of its
    configuration (``seeds``) has reached that evaluation or ended (marker files in ``gate``)."""

    def __init__(self, score, gate, seeds, **kwargs):
        super().__init__(score, **kwargs)
        self.gate, self.seeds = str(gate), tuple(seeds)

    def __call__(self, config, report, checkpoint_dir, dataset=None):
        import os

        me = f"{config.optim.lr}-{config.batch_size}"

        def mark(what):
            open(os.path.join(self.gate, f"{me}-{config.seed}-{what}"), "w").close()

        def reached(seed, step):
            return any(os.path.exists(os.path.join(self.gate, f"{me}-{seed}-{what}")) for what in (step, "end"))

        def gated(step, metrics):
            mark(step)
            deadline = time.monotonic() + 60  # a sibling that never comes (a test's mistake) fails late, not never
            while not all(reached(s, step) for s in self.seeds if s != config.seed) and time.monotonic() < deadline:
                time.sleep(0.002)
            return report(step, metrics)

        try:
            return super().__call__(config, gated, checkpoint_dir)
        finally:
            mark("end")


def main(argv: list[str]) -> int:
    """``fakes.py SPEC.yaml``: ``sweep run`` with the fake trainer (exit codes as the CLI's).
    The spec's executor runs the fake trainer: Ray's when the spec says ``ray``, else the local one,
    in this process or ``executor.max_concurrent`` trials at once in worker processes. With
    ``MAOU_FAKE_GATE`` set, every evaluation waits until that file exists (after
    ``MAOU_FAKE_GATE_AFTER`` trainings; only seed ``MAOU_FAKE_GATE_SEED`` when set)."""
    import os

    from maou import cli
    from maou.sweep.run import executors
    from maou.sweep.run.executors.local import LocalExecutor
    from maou.sweep.run.executors.pool import PoolExecutor

    def make_executor(config, threads=1):
        seed = os.environ.get(GATE_SEED)
        trainer = FakeTrainer(lr_batch_score, gate=os.environ.get(GATE),
                              gate_after=int(os.environ.get(GATE_AFTER, "0")),
                              gate_seed=int(seed) if seed is not None else None)
        if config.kind == "ray":  # the trainer travels by value (defined in __main__: cloudpickle's way)
            from maou.sweep.run.executors.ray import RayExecutor

            return RayExecutor(config, train=trainer)
        if (config.max_concurrent or 1) > 1:
            return PoolExecutor(config.max_concurrent, train=trainer, max_retries=config.max_retries)
        return LocalExecutor(trainer)

    executors.make_executor = make_executor
    return cli.main(["run", argv[0]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
