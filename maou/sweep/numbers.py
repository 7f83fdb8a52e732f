"""One number format for everything a person reads of a sweep: configurations (``ConfigKey``),
the report's tables and headers, figure labels, the dashboard's notes and the terminal view.

:func:`fmt`: ints as they are (``4``, ``12345``); floats to 4 significant digits (``0.04833``,
``1e-05``, ``2021``), a whole-number float as the int it equals (``4.0`` reads ``4``, ``20000.0``
reads ``20000``), so a value is written the same whether YAML gave it as ``4`` or ``4.0``;
non-finite floats as ``nan``, ``inf``, ``-inf``; None as ``-``; anything else as ``str()``.
"""

from __future__ import annotations

import math
from typing import Any

#: Significant digits of a float that is not a whole number.
DIGITS = 4


def fmt(value: Any) -> str:
    """``value`` in the one format of :mod:`maou.sweep.numbers` (see there)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{DIGITS}g}"


__all__ = ["DIGITS", "fmt"]
