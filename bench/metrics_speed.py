"""Stage 2's ranking metrics: thresholded F1 and average precision from one sort a row
(``maou.trainer.metrics.ranking_metrics``) against the code they replaced (one comparison and one
F1 per threshold; a full ``argsort`` for the average precision), on validation-shaped logits.

Prints milliseconds per call of each (median of ``--repeats`` interleaved calls, and the fastest),
their ratio, whether the results are equal bit for bit, and the time of the whole per-row
statistics of a batch (``LegalMoves.row_stats``) as evaluation computes them.

    python bench/metrics_speed.py                     # 1024 rows (the demo's eval_rows), 2 threads
    python bench/metrics_speed.py --rows 3620         # the demo's whole validation split
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from maou.shogi.shapes import MOVE_LABELS_NUM
from maou.trainer.config import LossConfig, ModelConfig
from maou.trainer.metrics import F1_THRESHOLDS, Reference, f1_precision_recall, ranking_metrics
from maou.trainer.tasks import LegalMoves


def previous_f1_at_thresholds(logits: torch.Tensor, actual: torch.Tensor,
                              thresholds: Sequence[float] = F1_THRESHOLDS) -> torch.Tensor:
    """Thresholded F1 as it was: one comparison and one F1 per threshold. (The tests hold the new
    code to this and to :func:`previous_average_precision`, bit for bit.)"""
    probs = torch.sigmoid(logits.float())
    return torch.stack([f1_precision_recall(probs > t, actual)[0] for t in thresholds], dim=1)


def previous_average_precision(logits: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Average precision as it was: a full argsort of every row."""
    order = logits.float().argsort(dim=1, descending=True)
    hits = actual.bool().gather(1, order).float()
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    precision_at_hit = hits.cumsum(dim=1) / ranks * hits
    positives = hits.sum(dim=1)
    return torch.where(positives > 0, precision_at_hit.sum(dim=1) / positives.clamp_min(1), torch.nan)


def timed(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, ``repeats`` rounds, the calls interleaved within a round."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    # a half-trained head: legal moves (7.5%) score higher than the rest, with overlap
    actual = torch.rand(args.rows, MOVE_LABELS_NUM, generator=g) < 0.075
    logits = torch.randn(args.rows, MOVE_LABELS_NUM, generator=g) * 1.5 - 3 + 3 * actual.float()
    task = LegalMoves(ModelConfig(), LossConfig())
    outputs, targets = {"legal_moves": logits}, {"legal_moves": actual.to(torch.uint8)}
    previous = {"previous F1 at 19 thresholds": lambda: previous_f1_at_thresholds(logits, actual),
                "previous average precision": lambda: previous_average_precision(logits, actual)}
    calls = {**previous, "ranking_metrics (both)": lambda: ranking_metrics(logits, actual),
             "row_stats (every Stage 2 statistic)": lambda: task.row_stats(outputs, targets, Reference())}
    for call in calls.values():  # warm-up
        call()
    seconds = timed(calls, args.repeats)
    print(f"{args.rows} rows x {MOVE_LABELS_NUM} labels, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved rounds (median, fastest):")
    for name, values in seconds.items():
        print(f"  {name:38s} {1e3 * statistics.median(values):8.1f} ms  {1e3 * min(values):8.1f} ms")
    before = statistics.median(seconds["previous F1 at 19 thresholds"]) + statistics.median(
        seconds["previous average precision"])
    after = statistics.median(seconds["ranking_metrics (both)"])
    ap, by_threshold = ranking_metrics(logits, actual)
    equal = torch.equal(by_threshold, previous_f1_at_thresholds(logits, actual)) and torch.equal(
        ap.nan_to_num(-1), previous_average_precision(logits, actual).nan_to_num(-1))
    print(f"  previous both {1e3 * before:.1f} ms -> {1e3 * after:.1f} ms: {before / after:.1f}x faster; "
          f"results {'equal bit for bit' if equal else 'DIFFERENT'}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
