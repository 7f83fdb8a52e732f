"""One storage that forwards every operation to another, with a policy around each call.

:class:`DelegatingStorage` is an Optuna ``BaseStorage`` whose every public method (each one
Optuna's ``BaseStorage`` has, found when this module is imported, so a method a newer Optuna adds
is forwarded too) calls the same method of an inner storage through its :class:`StoragePolicy`.
Retrying (:mod:`maou.sweep.storage.retries`) and the sweep lock's fence
(:mod:`maou.sweep.run.lock`) are two such policies; a storage with both is one wrapper around the
other.

Methods with a default implementation in ``BaseStorage`` (``get_best_trial``, ``get_n_trials``,
``get_trial_params``, ``get_trial_id_from_study_id_trial_number``, ``check_trial_is_updatable``,
``remove_session``, ...) are forwarded as themselves, never inherited: the inner storage's own
version runs (RDBStorage answers several of them in one query, and its ``remove_session`` is not
the default no-op), and each is one call to the policy (one retry, one fence decision) rather than
the several calls ``BaseStorage``'s default would make back through the wrapper.

Any other method of the inner storage reached through the wrapper (RDBStorage's ``upgrade``, say)
goes through the policy as well, under its own name; plain attributes (``engine``, ``url``) are the
inner storage's, as they are.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from optuna.storages import BaseStorage

#: Every public method of Optuna's BaseStorage: the operations a DelegatingStorage forwards.
OPERATIONS: tuple[str, ...] = tuple(name for name, _ in inspect.getmembers(BaseStorage, inspect.isfunction)
                                    if not name.startswith("_"))


class StoragePolicy:
    """What a :class:`DelegatingStorage` does around each operation: here, nothing."""

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the inner storage's ``name`` (``fn``, bound) on ``args`` and ``kwargs``; a policy
        may check first, retry, or refuse (raise) instead."""
        return fn(*args, **kwargs)


class DelegatingStorage(BaseStorage):
    """``inner`` with every operation called through ``policy``.

    Build one with a factory or subclass constructor (mypy sees the operations as abstract: they
    are set on the class below, from :data:`OPERATIONS`)."""

    def __init__(self, inner: BaseStorage, policy: StoragePolicy) -> None:
        self.inner, self.policy = inner, policy

    def __getattr__(self, name: str) -> Any:  # what is not a BaseStorage operation
        inner = self.__dict__.get("inner")
        if inner is None:  # not initialised yet (copy, unpickling): no recursion into self.inner
            raise AttributeError(name)
        value = getattr(inner, name)
        if not inspect.ismethod(value) or name.startswith("__"):
            return value
        policy = self.policy

        def method(_self: DelegatingStorage, *args: Any, **kwargs: Any) -> Any:
            return policy.call(name, value, args, kwargs)

        return types.MethodType(method, self)  # a method: a wrapper around this one wraps it in turn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r}, {self.policy!r})"


def _operation(name: str) -> Callable[..., Any]:
    def method(self: DelegatingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.policy.call(name, getattr(self.inner, name), args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(BaseStorage, name).__doc__
    return method


for _name in OPERATIONS:
    setattr(DelegatingStorage, _name, _operation(_name))
DelegatingStorage.__abstractmethods__ = frozenset()  # every operation is set just above

__all__ = ["OPERATIONS", "DelegatingStorage", "StoragePolicy"]
