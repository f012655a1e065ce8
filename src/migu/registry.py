"""One way to register a plug-in: a name, a factory, a typed config and traits.

Every kind of plug-in (methods, evaluators, data sources, task formats) has one ``Registry``;
each plug-in's module registers itself at its end, and its package's ``__init__`` imports the
modules, so that importing the package is what makes the names known::

    EVALUATORS.register("my_score", MyScore, MyScoreConfig, kinds=("options",))

``build(name, mapping)`` turns a config's untyped mapping (a YAML section) into the typed,
checked settings (``migu.settings.from_mapping``: unknown keys and wrong types are one line
naming the dotted key) and calls the factory with them. Traits are what the rest of migu may
ask of a plug-in without building it (an evaluator's ``final_only``, a method that decides what
trains), declared where the plug-in is registered rather than read with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .settings import from_mapping

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered plug-in: ``factory(settings)`` builds it (``factory()`` when ``config_cls`` is
    None); ``traits`` are its declared properties."""

    name: str
    factory: Callable[..., T]
    config_cls: type | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Plug-ins of one kind by name. ``where`` is the config section their settings live under
    (``methods``, ``evaluators``), named in every error."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], config_cls: type | None = None, **traits: Any) -> None:
        """Make ``name`` known; a name registered twice is refused (two plug-ins would shadow each
        other depending on import order)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already (by {self._entries[name].factory!r})")
        self._entries[name] = Entry(name, factory, config_cls, dict(traits))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        """The registered plug-in, or one line naming the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def trait(self, name: str, key: str, default: Any = None) -> Any:
        return self.entry(name).traits.get(key, default)

    def with_trait(self, key: str, value: Any = True) -> list[str]:
        """The names whose trait ``key`` equals ``value``."""
        return [n for n in self.names() if self._entries[n].traits.get(key) == value]

    def settings(self, name: str, mapping: Any = None) -> Any:
        """The typed, checked settings of ``name`` from ``mapping`` (None when it takes none). A
        config class may read its own mapping with a ``from_dict(values, where)`` classmethod
        (settings nested in the file but flat in the config); every error names the key."""
        entry, where = self.entry(name), f"{self.where}.{name}"
        if mapping is not None and not isinstance(mapping, Mapping):
            raise ValueError(f"{where} must be a mapping of settings, got {mapping!r}")
        values = dict(mapping or {})
        if entry.config_cls is None:
            if values:
                raise ValueError(f"{where} takes no settings; got {sorted(values)}")
            return None
        own = getattr(entry.config_cls, "from_dict", None)
        try:
            return own(values, where) if callable(own) else from_mapping(entry.config_cls, values, where)
        except TypeError as err:  # a check of the dataclass itself, on a type from_mapping leaves alone
            raise ValueError(f"{where}: {err}") from None
        except ValueError as err:  # the dataclass's own checks name the field, not the section
            message = str(err)
            raise ValueError(message if where in message else f"{where}: {message}") from None

    def build(self, name: str, mapping: Any = None) -> T:
        """``name`` built from its settings (``settings``)."""
        settings = self.settings(name, mapping)
        entry = self.entry(name)
        return entry.factory(settings) if entry.config_cls is not None else entry.factory()
