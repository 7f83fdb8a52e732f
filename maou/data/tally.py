"""Counts by reason, each with its first few examples: what a read skipped, what a search left out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Examples kept per reason.
MAX_EXAMPLES = 3


@dataclass
class Tally:
    """How often each reason was given (``counts``) and its first :data:`MAX_EXAMPLES` examples
    (``examples``: ``where: detail``, or ``where`` alone)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: object, detail: str = "") -> None:
        """Count ``reason`` once; ``where`` (and ``detail``) its example while fewer are kept."""
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{where}: {detail}" if detail else str(where))

    def merge(self, other: Tally) -> None:
        """Add ``other``'s counts, as if its reasons had been given after these (its examples kept
        while fewer than :data:`MAX_EXAMPLES` are)."""
        self.counts.update(other.counts)
        for reason, examples in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(examples[: MAX_EXAMPLES - len(kept)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def counts_by_reason(self) -> dict[str, int]:
        """The counts, in reason order."""
        return dict(sorted(self.counts.items()))

    def examples_by_reason(self) -> dict[str, list[str]]:
        """Copies of the examples, in reason order."""
        return {k: list(v) for k, v in sorted(self.examples.items())}


__all__ = ["MAX_EXAMPLES", "Tally"]
