"""What a step tries, in words, as the spec gives it (``sweep plan``, the live view of ``sweep run``)."""

from __future__ import annotations

from maou.sweep.identity import short_keys
from maou.sweep.spec import ParamRange, Step


def _value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _range(r: ParamRange) -> str:
    if r.choices is not None:
        return "|".join(_value(c) for c in r.choices)
    text = f"{_value(r.low)}..{_value(r.high)}"
    return text + "".join(part for part, on in ((" log", r.log), (f" step {_value(r.step)}", r.step is not None),
                                                (" integer", r.integer)) if on)


def step_tries(step: Step, short: bool = False) -> list[str]:
    """The values ``step`` tries, as the spec gives them: one entry per grid key
    (``loss.gamma_neg 1,2,3,4``), per explicit configuration (``model.hidden_dim=512
    model.dropout=0.1``) or per searched parameter (``optim.lr 1e-05..0.01 log``, then
    ``10 tpe samples``); none for a baseline. ``short``: each key's last dotted part where that is
    unambiguous within the step."""
    keys = list(dict.fromkeys([*step.grid, *(k for c in step.configs for k in c),
                               *(step.search.params if step.search is not None else ())]))
    name = dict(zip(keys, short_keys(keys) if short else keys, strict=True))
    if step.grid:
        return [f"{name[k]} {','.join(_value(v) for v in values)}" for k, values in step.grid.items()]
    if step.configs:
        return [" ".join(f"{name[k]}={_value(v)}" for k, v in c.items()) for c in step.configs]
    if step.search is not None:
        return ([f"{name[k]} {_range(r)}" for k, r in step.search.params.items()]
                + [f"{step.search.trials} {step.search.sampler} samples"])
    return []


__all__ = ["step_tries"]
