"""The schema of what a sweep stores on Optuna's studies and trials: every user attribute's key, once.

Optuna keeps a trial's and a study's story in free-form user attributes. Here is their one list:
the writers (:mod:`maou.sweep.run.step`, :mod:`maou.sweep.run.recorder`, the executors, the
protocol) and the read model (:mod:`maou.sweep.records`) name a key through these constants, so a
renamed key cannot silently read back as None. The exports' column names are these names too.
"""

from __future__ import annotations

from typing import Any


class TrialAttr:
    """User attributes of a step's trial."""

    # what it trains (written when it starts)
    STUDY = "study"
    STEP = "step"
    SEED = "seed"
    #: The configuration's identity (:class:`~maou.sweep.identity.ConfigKey`, sorted JSON).
    CONFIG_KEY = "config_key"
    #: The training config as the trial ran it.
    CONFIG = "config"
    PACKAGE_VERSION = "package_version"
    DATASET_HASH = "dataset_hash"
    METRIC = "metric"
    DIRECTION = "direction"
    REDUCE = "reduce"
    MAX_STEPS = "max_steps"
    # where it ran (the executors)
    EXECUTOR = "executor"
    NODE_ID = "node_id"
    CUDA_VISIBLE_DEVICES = "cuda_visible_devices"
    #: A node-local copy of the datasets it trained on (another node than the driver's).
    DATASET_DIR = "dataset_dir"
    # how it ended (the recorder)
    WALL_TIME_S = "wall_time_s"
    CURVES = "curves"
    FINAL_METRICS = "final_metrics"
    BEST_METRICS = "best_metrics"
    BEST_STEP = "best_step"
    STEPS_DONE = "steps_done"
    STOP_REASON = "stop_reason"
    DEVICE = "device"
    CHECKPOINT = "checkpoint"
    PRUNE_REASON = "prune_reason"
    PRUNE_DETAIL = "prune_detail"
    PRUNE_STEP = "prune_step"
    FAIL_REASON = "fail_reason"
    ERROR = "error"
    #: ``<study>#<number>`` of the finished trial of an earlier step this one copies.
    REUSED_FROM = "reused_from"

    #: What :class:`~maou.trainer.result.TrainResult` gives, under its own field names.
    RESULT_FIELDS = (BEST_STEP, STEPS_DONE, MAX_STEPS, STOP_REASON, DEVICE, CHECKPOINT)

    @staticmethod
    def failures(executor: str) -> str:
        """How often an executor's worker died under the trial (``ray_failures``, ``pool_failures``)."""
        return f"{executor}_failures"

    @staticmethod
    def trial_id(executor: str) -> str:
        """The executor's own id of the trial (``ray_trial_id``)."""
        return f"{executor}_trial_id"

    @classmethod
    def of_stop(cls, stop: Any) -> dict[str, Any]:
        """The attributes of a trial a :class:`~maou.trainer.result.Stop` ended."""
        return {cls.PRUNE_REASON: stop.reason, cls.PRUNE_DETAIL: stop.detail, cls.PRUNE_STEP: int(stop.step)}


class StudyAttr:
    """User attributes of a step's study."""

    SWEEP = "sweep"
    STEP = "step"
    STEP_INDEX = "step_index"
    DESCRIPTION = "description"
    CARRIED_IN = "carried_in"
    CARRIED_OUT = "carried_out"
    #: What must not change between runs of the step (the base config, the data, the objective).
    FINGERPRINT = "fingerprint"
    DECISION = "decision"
    GRID_EXTENSIONS = "grid_extensions"
    WINNER_TRIALS = "winner_trials"

    #: Every attribute a sweep writes on a step's study; any other is another tool's.
    ALL = frozenset({SWEEP, STEP, STEP_INDEX, DESCRIPTION, CARRIED_IN, CARRIED_OUT, FINGERPRINT, DECISION,
                     GRID_EXTENSIONS, WINNER_TRIALS})


__all__ = ["StudyAttr", "TrialAttr"]
