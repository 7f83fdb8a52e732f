"""What a training run hands back: plain data (no torch), the same locally and across processes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

History = list[tuple[int, dict[str, float]]]


class ResourceExhausted(RuntimeError):
    """A run that could not go on for lack of a resource (disk space, device memory); the message names
    it, where, and what to do. The sweep records it as the trial's cause and resumes it later."""


@dataclass(frozen=True)
class Stop:
    """Why a run stopped before its budget: ``reason`` a short code, ``detail`` the numbers behind
    it, at optimizer step ``step``. Returned by a report callback to stop the run (a collapse rule,
    a pruner), or set by the trainer itself (``nan_loss``)."""

    reason: str
    detail: str
    step: int


#: Called at every evaluation with (step, metrics); a :class:`Stop` ends the run.
Report = Callable[[int, dict[str, float]], "Stop | None"]
NAN_LOSS = "nan_loss"


@dataclass
class TrainResult:
    stage: int
    steps_done: int
    max_steps: int
    stop: Stop | None
    final_metrics: dict[str, float]
    #: Metrics at the evaluation with the best selection metric (the stage's, in the registry).
    best_metrics: dict[str, float]
    best_step: int
    history: History = field(default_factory=list)
    wall_time_s: float = 0.0
    device: str = "cpu"
    #: Training samples per second of training time (evaluations excluded).
    samples_per_s: float = 0.0
    checkpoint: str | None = None
    #: Share of training time the host spent taking batches (index + gather).
    data_wait_share: float = 0.0
    #: Content hash of the dataset the run trained on (None for the synthetic Stage 1 rows).
    dataset_hash: str | None = None

    @property
    def stop_reason(self) -> str | None:
        return self.stop.reason if self.stop is not None else None

    @property
    def stopped_early(self) -> bool:
        return self.stop is not None

    def to_plain(self) -> dict[str, Any]:
        """Plain data (``json.dumps`` writes it, NaN included): how a result crosses processes."""
        return dataclasses.asdict(self)

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> TrainResult:
        """The inverse of :meth:`to_plain`."""
        data = dict(data)
        data["stop"] = Stop(**data["stop"]) if data.get("stop") else None
        data["history"] = [(int(s), dict(m)) for s, m in data.get("history", [])]
        return cls(**data)


def finite_or_none(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, recursively through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


__all__ = ["History", "NAN_LOSS", "Report", "ResourceExhausted", "Stop", "TrainResult", "finite_or_none"]
