"""Dataclass settings from untyped mappings (YAML files, ``key=value`` overrides), checked once.

Every config of migu (a run's ``data`` and ``train`` sections, each method's settings) is a
dataclass; ``from_mapping`` builds one from a dict, rejecting unknown keys and converting or
rejecting each value by its field's annotation, so that a wrong value fails when the config is
loaded, with the dotted key in the message, instead of mid-run or as a ``TypeError``:

- ``bool``: only ``true``/``false`` (``maybe``, ``yes``, ``1`` are errors);
- ``int``: an integer (``1e3`` is accepted as 1000; ``abc`` and ``2.5`` are errors);
- ``float``: a number; a string such as ``1e-4`` (YAML 1.1 reads it as text) is converted;
- ``str`` and ``Literal[...]``: text, one of the allowed values for a ``Literal``;
- ``X | None``: null, or an ``X``; ``list[...]``/``tuple[...]``: a list (of checked items);
- ``dict[...]``: a mapping; a nested dataclass: a mapping of its own fields (or an instance).
Fields annotated ``Any`` (or anything else) are left to the dataclass's own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _key(where: str | None, name: str) -> str:
    return f"{where}.{name}" if where else name


def from_mapping(cls: type[T], values: Any, where: str | None = None) -> T:
    """``cls(**values)`` with unknown keys rejected and every value checked against its field's
    annotation; ``where`` is the dotted prefix named in errors (``methods.migu``, ``train``)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where or 'the config'} must be a mapping of settings, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'the run config'}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    checked = {name: check_value(value, hints.get(name, Any), _key(where, name)) for name, value in values.items()}
    return cls(**checked)


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """``value`` converted to ``annotation`` (see the module docstring), or a ValueError naming ``key``."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        args = [a for a in options if a is not type(None)]
        if value is None and len(args) < len(options):
            return None
        for arg in args:
            try:
                return check_value(value, arg, key)
            except ValueError:
                continue
        if len(args) == 1 and len(args) == len(options):
            return check_value(value, args[0], key)
        raise ValueError(f"{key} must be {' or '.join(_describe(a) for a in options)}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        return _integer(value, key)
    if annotation is float:
        return _number(value, key)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a text, got {value!r}")
        return value
    if origin in (list, tuple) or annotation in (list, tuple):
        return _sequence(value, annotation, origin or annotation, key)
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return value if isinstance(value, annotation) else from_mapping(annotation, value, key)
    return value


def _describe(annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a text", type(None): "null"}
    if annotation in names:
        return names[annotation]
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key} must be an integer, got {value!r}") from None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"{key} must be an integer, got {value!r}")


def _number(value: Any, key: str) -> float | int:
    """A float field: ints stay ints (a run's fingerprint hashes the config as given), text that
    reads as a number is converted."""
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{key} must be a number, got {value!r}")


def _sequence(value: Any, annotation: Any, kind: type, key: str) -> Any:
    if isinstance(value, str) and kind is tuple:
        value = [value]  # one pattern for a tuple of patterns
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key} must be a list, got {value!r}")
    args = typing.get_args(annotation)
    item = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else Any
    items = [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if kind is tuple else items


def to_dict(config: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (its own ``to_dict`` if it has one)."""
    own = getattr(config, "to_dict", None)
    if callable(own):
        return dict(own())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return {}


def check_fields(config: Any, where: str) -> None:
    """Every field of a settings dataclass against its annotation, as ``from_mapping`` checks a
    mapping (a ``Literal`` its allowed values, a number its type), for an instance built directly;
    errors name ``where.<field>``. A dataclass's ``__post_init__`` calls it, so that both ways of
    making a config are checked by this one checker."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        annotation = hints.get(f.name, Any)
        if typing.get_origin(annotation) is typing.Literal or annotation in (bool, int, float, str):
            setattr(config, f.name, check_value(getattr(config, f.name), annotation, _key(where, f.name)))


def check_number(value: float | int | None, key: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:  # fmt: skip
    """A finite number within bounds (``low`` excluded when ``low_open``); None passes. One line
    naming ``key`` otherwise (``train.lr=inf`` would train to NaN and ``data.n_train=-5`` drop five
    examples, silently)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{key} must be {'greater than' if low_open else 'at least'} {low:g}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{key} must be at most {high:g}, got {value}")
