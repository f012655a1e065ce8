"""Data sources by name (``data.source``): the registry every source module registers itself in.

A source is ``loader(data_config, seed) -> TaskSequence``, registered with its traits: the task
``kinds`` it can give, a line of ``doc``, and ``order_names``, the strings ``data.order`` may be
that name a sequence of several tasks (``None``: every string does; any other string is a single
task), so that the sequence's length is known before any data loads. ``migu.data`` imports every
source module; the runner never names a source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .tasks import TaskSequence

SourceLoader = Callable[[Any, int], TaskSequence]
SOURCES: Registry[TaskSequence] = Registry("data source", "data.source")


def register_source(name: str, loader: SourceLoader, kinds: tuple[str, ...] = ("options",), doc: str = "",
                    order_names: tuple[str, ...] | None = ()) -> None:  # fmt: skip
    """Register a data source (``SOURCES``); see the module docstring for the traits."""
    SOURCES.register(name, loader, kinds=tuple(kinds), doc=doc, order_names=order_names)


def check_source(name: str) -> None:
    if name not in SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(SOURCES.names())}; got {name!r}")


def source_kind(data: Any) -> str:
    """The task kind ``data`` will give: its source's only kind, or ``data.kind``."""
    check_source(data.source)
    kinds = SOURCES.trait(data.source, "kinds")
    return str(kinds[0] if len(kinds) == 1 else data.kind)


def task_count(data: Any) -> int | None:
    """How many tasks ``data`` will give, where that is known before the data loads: a list order
    less the tasks ``data.replace`` drops, or a string its source reads as one task; ``None`` for a
    named order."""
    check_source(data.source)
    order, names = data.order, SOURCES.trait(data.source, "order_names")
    if isinstance(order, str):
        return None if names is None or order in names else 1
    dropped = {name.lower() for name, stand_in in data.replace.items() if stand_in is None}
    return sum(1 for task in order if not (isinstance(task, str) and task.lower() in dropped))


def load_source(data: Any, seed: int) -> TaskSequence:
    """The task sequence ``data`` (a ``DataConfig``) describes."""
    check_source(data.source)
    return SOURCES.entry(data.source).factory(data, seed)
