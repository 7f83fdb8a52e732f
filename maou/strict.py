"""Strict, typed loading of nested frozen dataclasses from plain dicts (YAML).

One mechanism serves the training config, the sweep spec and the pruning rules:

* unknown keys are rejected with their dotted path (``loss.gama_neg: unknown key``);
* values are type-checked against the annotations (``int`` is accepted where ``float`` is
  expected, ``bool`` is never accepted as a number);
* a dataclass validates its own values in ``__post_init__`` with :func:`require`; the error is
  re-raised with the full path of the offending key and its value;
* a field marked ``inline`` (``field(metadata=INLINE)``) takes the keys of its enclosing mapping
  that are not the enclosing dataclass's own: a wrapper and the object it wraps read as one
  section (``pruning.divergence: {enabled: false, factor: 3}``);
* generic dataclasses (``Rule[DivergenceDetector]``) are resolved through their type arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
#: Field metadata of an inline field (see the module docstring).
INLINE = {"inline": True}


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        self.bare_message = message
        super().__init__(f"{path}: {message}" if path else message)


class FieldError(ValueError):
    """Raised by :func:`require`: field ``key`` of a dataclass holds ``value``, which breaks ``rule``."""

    def __init__(self, key: str, rule: str, value: Any) -> None:
        self.key, self.rule, self.value = key, rule, value
        super().__init__(f"{key} {rule}, got {value!r}")


def require(obj: Any, key: str, condition: bool, rule: str) -> None:
    """Validation helper for ``__post_init__``: field ``key`` of ``obj`` must satisfy ``rule``."""
    if not condition:
        raise FieldError(key, rule, getattr(obj, key, None))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def dataclass_of(tp: Any) -> type | None:
    """The dataclass behind ``tp`` (itself, or the origin of a generic alias), else None."""
    cls = get_origin(tp) or tp
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def field_types(tp: Any) -> dict[str, Any]:
    """Field name -> annotation of dataclass ``tp``, type variables replaced by ``tp``'s arguments."""
    cls = dataclass_of(tp)
    assert cls is not None, tp
    hints = get_type_hints(cls)
    params = getattr(cls, "__parameters__", ())
    if params and get_args(tp):
        binding = dict(zip(params, get_args(tp)))
        hints = {k: binding.get(v, v) for k, v in hints.items()}
    return hints


def _inline_field(cls: type) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if f.metadata.get("inline")), None)


def known_keys(tp: Any) -> set[str]:
    """The keys a mapping for dataclass ``tp`` may hold (inline fields contribute theirs)."""
    cls = dataclass_of(tp)
    assert cls is not None
    keys = {f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("inline")}
    inline = _inline_field(cls)
    if inline is not None:
        keys |= known_keys(field_types(tp)[inline.name])
    return keys


def convert(tp: Any, value: Any, path: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise :class:`ConfigError` naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, path)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise ConfigError(f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}", path)
        return value
    cls = dataclass_of(tp)
    if cls is not None:
        if isinstance(value, cls):
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
    return _convert_scalar(tp, value, path)


def _convert_union(tp: Any, value: Any, path: str) -> Any:
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return convert(option, value, path)
        except ConfigError:
            continue
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"expected {names}, got {value!r}", path)


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
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
            hint = " (quote-free numbers like 1e-4 are read as numbers)" if isinstance(value, str) else ""
            raise ConfigError(f"expected a number, got {value!r}{hint}", path)
        if not math.isfinite(value):
            raise ConfigError(f"must be a finite number, got {value!r}", path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", path)
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", path)


def _construct(cls: Any, kwargs: dict[str, Any], path: str) -> Any:
    """``cls(**kwargs)``, a :class:`FieldError` of its validation re-raised with the key's path."""
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{exc.rule} (got {exc.value!r})", _join(path, exc.key)) from None


def from_dict(cls: type[T] | Any, data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly. ``path`` prefixes error messages."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {data!r}", path)
    target = dataclass_of(cls)
    assert target is not None, cls
    hints = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(target) if f.init}
    inline = _inline_field(target)
    own = {name for name in fields if inline is None or name != inline.name}
    allowed = known_keys(cls)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key (known keys: {', '.join(sorted(allowed))})", _join(path, str(key)))
    kwargs: dict[str, Any] = {}
    for name in own:
        field = fields[name]
        if name in data:
            kwargs[name] = convert(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError("missing required key", _join(path, name))
    if inline is not None:
        kwargs[inline.name] = from_dict(hints[inline.name], {k: v for k, v in data.items() if k not in own}, path)
    return _construct(target, kwargs, path)


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of a dataclass tree (inline fields flattened)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if not f.init:  # bookkeeping, not config (a spec's source file): never read, never written
                continue
            value = to_dict(getattr(obj, f.name))
            if f.metadata.get("inline"):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dotted_keys(cls: type) -> set[str]:
    """Every leaf key of dataclass ``cls`` in dotted form (``loss.gamma_neg``)."""
    keys: set[str] = set()
    for name, tp in field_types(cls).items():
        if dataclass_of(tp) is not None:
            keys |= {f"{name}.{k}" for k in dotted_keys(tp)}
        else:
            keys.add(name)
    return keys


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """A nested mapping (``to_dict`` of a config) as its leaves under dotted keys (``loss.gamma_neg``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def lookup(obj: Any, dotted: str) -> Any:
    """The value at dotted key ``dotted`` of a dataclass tree (``loss.gamma_neg``); with a dataclass
    *type* for ``obj``, the declared type of that key. The one walk of a dotted key."""
    value = obj
    for part in dotted.split("."):
        value = field_types(value)[part] if isinstance(value, type) else getattr(value, part)
    return value


def with_overrides(obj: T, overrides: dict[str, Any], path: str = "") -> T:
    """A copy of dataclass ``obj`` with dotted-key ``overrides`` applied, each value type-checked
    and every touched section re-validated. Errors name ``path`` and the dotted key."""
    for dotted, value in overrides.items():
        obj = _replace_leaf(obj, dotted.split("."), value, path, "")
    return obj


def _replace_leaf(obj: Any, parts: list[str], value: Any, path: str, prefix: str) -> Any:
    name = parts[0]
    dotted = f"{prefix}{name}"
    hints = field_types(type(obj)) if dataclasses.is_dataclass(obj) else {}
    if name not in hints:
        raise ConfigError("unknown key", _join(path, dotted))
    if len(parts) == 1:
        new = convert(hints[name], value, _join(path, dotted))
    else:
        child = getattr(obj, name)
        if not dataclasses.is_dataclass(child):
            raise ConfigError("unknown key", _join(path, ".".join([dotted, *parts[1:]])))
        new = _replace_leaf(child, parts[1:], value, path, f"{dotted}.")
    try:
        return dataclasses.replace(obj, **{name: new})
    except FieldError as exc:
        raise ConfigError(f"{exc.rule} (got {exc.value!r})", _join(path, f"{prefix}{exc.key}")) from None


# --- YAML 1.2 numbers -------------------------------------------------------------------------

#: YAML 1.2 core-schema floats: PyYAML (YAML 1.1) reads ``1e-4`` and ``1e30`` as strings.
_YAML12_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"
                           r"|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")


@functools.cache
def _loader() -> type:
    import yaml

    class Yaml12Loader(yaml.SafeLoader):
        """``yaml.safe_load`` with YAML 1.2 floats."""

    Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    return Yaml12Loader


def parse_yaml(text: str, where: str) -> Any:
    """YAML text (safe, YAML 1.2 numbers); a syntax error is a :class:`ConfigError` naming ``where``."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid YAML: {detail}") from None


def read_yaml_file(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (a ``what``: "sweep spec", "config file"), or ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such {what}: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


__all__ = ["ConfigError", "FieldError", "INLINE", "convert", "dataclass_of", "dotted_keys", "field_types",
           "flatten", "from_dict", "known_keys", "lookup", "parse_yaml", "read_yaml_file", "require", "to_dict",
           "with_overrides"]
