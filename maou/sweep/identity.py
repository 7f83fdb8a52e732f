"""A configuration's identity: the training keys where it differs from the sweep's base config.

:class:`ConfigKey` is hashable and ordered (by its text), so trials group by it, leaderboards sort by it and
the carried configuration is compared with it directly. It is stored on every trial (user
attribute ``config_key``) and in every decision as its canonical text, sorted JSON
(``{"loss.gamma_neg":2.0}``), read back once with :meth:`ConfigKey.parse`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from maou.strict import to_dict
from maou.sweep.numbers import fmt

Scalar = Any  # None, bool, int, float or str: the leaves of a training config
#: How the base configuration (no overrides) reads.
BASE = "(base)"


@dataclass(frozen=True)
class ConfigKey:
    """Sorted ``(dotted key, value)`` pairs; the empty key is the base configuration itself."""

    items: tuple[tuple[str, Scalar], ...] = ()

    @classmethod
    def of(cls, overrides: dict[str, Any]) -> ConfigKey:
        return cls(tuple(sorted((k, _hashable(v)) for k, v in overrides.items())))

    @classmethod
    def between(cls, config: Any, base: Any) -> ConfigKey:
        """The keys where training config ``config`` differs from ``base`` (the seed excluded)."""
        diff: dict[str, Any] = {}

        def walk(a: Any, b: Any, prefix: str) -> None:
            if isinstance(a, dict):
                for key in a:
                    walk(a[key], b.get(key) if isinstance(b, dict) else None, f"{prefix}{key}.")
            elif a != b:
                diff[prefix[:-1]] = a

        walk(to_dict(config), to_dict(base), "")
        diff.pop("seed", None)
        return cls.of(diff)

    @classmethod
    def parse(cls, text: str) -> ConfigKey:
        """The key of canonical text :attr:`text` (as stored on trials and decisions)."""
        return cls.of(json.loads(text))

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.items}

    @property
    def text(self) -> str:
        """Canonical sorted JSON: what trials and decisions store."""
        return json.dumps(self.overrides, sort_keys=True, separators=(",", ":"))

    @property
    def is_base(self) -> bool:
        return not self.items

    def pairs(self) -> list[str]:
        """``key=value`` for each override, values in the one number format (:func:`fmt`); empty
        for the base configuration."""
        return [f"{k}={fmt(v)}" for k, v in self.items]

    def label(self, sep: str = " ") -> str:
        """The pairs joined by ``sep``, or ``(base)`` for the base configuration."""
        return sep.join(self.pairs()) or BASE

    def __str__(self) -> str:
        return self.label()

    def __lt__(self, other: object) -> bool:  # values of one key may mix None and numbers
        if not isinstance(other, ConfigKey):
            return NotImplemented
        return self.text < other.text


def short_keys(keys: Sequence[str]) -> list[str]:
    """Each dotted key's last part (``loss.gamma_neg`` -> ``gamma_neg``), where no other key of
    ``keys`` ends the same way (``optim.lr`` and ``model.lr`` stay whole)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [short if last.count(short) == 1 else key for key, short in zip(keys, last, strict=True)]


def _hashable(value: Any) -> Scalar:
    return tuple(value) if isinstance(value, list) else value


__all__ = ["BASE", "ConfigKey", "short_keys"]
