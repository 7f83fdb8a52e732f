"""Strict, typed loading of nested frozen dataclasses from plain dicts (YAML).

One mechanism serves the training config and the sweep spec:

* unknown keys are rejected with their dotted path (``loss.gama_neg: unknown key``);
* values are type-checked against the annotations (``int`` is accepted where ``float`` is
  expected, ``bool`` is never accepted as a number);
* a dataclass may validate its own values in ``__post_init__`` by calling :func:`require`; the
  error is re-raised with the full path of the offending key.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        self.bare_message = message
        super().__init__(f"{path}: {message}" if path else message)


class _FieldError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def require(condition: bool, key: str, message: str) -> None:
    """Validation helper for ``__post_init__``: raise for field ``key`` when ``condition`` fails."""
    if not condition:
        raise _FieldError(key, message)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise :class:`ConfigError` naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except ConfigError as exc:
                errors.append(exc.bare_message)
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"expected {names}, got {value!r}", path)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}", path)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", path)
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", path)
        args = get_args(tp)
        item_type = args[0] if args else Any
        items = [convert(item_type, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", path)
        key_type, value_type = get_args(tp) or (Any, Any)
        return {convert(key_type, k, _join(path, str(k))): convert(value_type, v, _join(path, str(k)))
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", path)
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", path)


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly. ``path`` prefixes error messages."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", path)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key (known keys: {known})", _join(path, str(key)))
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError("missing required key", _join(path, name))
    try:
        return cls(**kwargs)
    except _FieldError as exc:
        raise ConfigError(f"{exc} (got {kwargs.get(exc.key, getattr(cls, exc.key, None))!r})",
                          _join(path, exc.key)) from None


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of a dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dotted_keys(cls: type) -> set[str]:
    """Every leaf key of dataclass ``cls`` in dotted form (``loss.gamma_neg``)."""
    keys: set[str] = set()
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys |= {f"{f.name}.{k}" for k in dotted_keys(tp)}
        else:
            keys.add(f.name)
    return keys


def with_overrides(obj: T, overrides: dict[str, Any], path: str = "") -> T:
    """A copy of dataclass ``obj`` with dotted-key ``overrides`` applied and re-validated."""
    data = to_dict(obj)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError("unknown key", _join(path, ".".join(parts[: i + 1])))
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError("unknown key", _join(path, dotted))
        node[parts[-1]] = value
    return from_dict(type(obj), data, path)


__all__ = ["ConfigError", "require", "convert", "from_dict", "to_dict", "dotted_keys", "with_overrides"]
