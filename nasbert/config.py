"""Typed, validated configs: frozen dataclasses built from YAML mappings.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names the key (``train.lr``), the
expected type and the value given. Nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["ConfigError", "check_types", "from_mapping", "to_mapping"]

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration value."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key {key!r} must be null, got {value!r}")
        return None
    if origin is tuple:  # tuple[X, ...]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key!r}")


def from_mapping(cls: type[T], data: Any, *, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, checking every key and type (nested dataclasses too).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 1e-3
    ...     steps: int = 10
    >>> from_mapping(Opt, {"lr": 0.1})
    Opt(lr=0.1, steps=10)
    >>> from_mapping(Opt, {"lr": 0.1, "step": 3})
    Traceback (most recent call last):
    ...
    nasbert.config.ConfigError: unknown config key 'step'; allowed keys: lr, steps
    """
    if data is None:
        data = {}
    where = prefix or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {full!r}; allowed keys: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], value, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def check_types(obj: Any, prefix: str) -> None:
    """Check every field of a dataclass built directly (not through :func:`from_mapping`) against its annotation,
    with the same rules and messages; for a ``__post_init__`` before its range checks."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.init:
            _convert(hints[f.name], getattr(obj, f.name), f"{prefix}.{f.name}")


def to_mapping(obj: Any) -> Any:
    """The inverse of :func:`from_mapping`: plain dicts, lists and scalars (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    return obj
