"""Methods by name, composed with ``+`` (``finetune+migu``, later ``lora+replay+migu``)."""

from __future__ import annotations

from typing import Any

from ..settings import to_dict
from . import derpp, ewc, finetune, fisher, freeze_bottom, gradient, lora, migu_method, moelora, osf, replay  # noqa: F401
from .base import METHODS, STAGES, Method
from .finetune import Finetune


def parse_spec(spec: str) -> list[str]:
    """``"finetune+migu"`` -> ``["finetune", "migu"]``, checked against the registry."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if not names:
        raise ValueError("empty method name; e.g. 'finetune' or 'finetune+migu'")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"method: unknown method(s) {unknown} in {spec!r}; known: {', '.join(METHODS.names())}")
    if len(set(names)) != len(names):
        raise ValueError(f"method {spec!r} names a method twice")
    rows = [n for n in names if METHODS.trait(n, "chooses_rows")]
    if len(rows) > 1:
        raise ValueError(f"{' and '.join(rows)} both choose the rows to update: use one of them")
    unmaskable = [n for n in names if METHODS.trait(n, "masks_rows") is False]
    if rows and unmaskable:
        raise ValueError(f"{unmaskable[0]} trains no weight rows that {rows[0]} could mask; use {unmaskable[0]} alone")
    models = [n for n in names if METHODS.trait(n, "decides_training")]
    if len(models) > 1:
        raise ValueError(f"{spec!r} names {len(models)} methods that decide what trains ({models}): use one")
    return names


def default_threshold(names: list[str]) -> float:
    """The paper's T per combination: 0.1 with O-LoRA, 0.4 with replay, else 0.7 (each method's
    ``migu_threshold`` trait; the smallest where several have one)."""
    found = [t for n in names if (t := METHODS.trait(n, "migu_threshold")) is not None]
    return min(found) if found else 0.7


def build_methods(spec: str, settings: dict[str, dict[str, Any]] | None = None) -> list[Method]:
    """Build the composed methods, ordered by stage; ``settings[name]`` configures each one.

    Without a method that decides what trains (``finetune``, later ``lora`` ...), ``finetune``
    is implied, so ``migu`` alone means ``finetune+migu``. Each method's ``config`` holds its
    effective settings, defaults included (``method_settings``).
    """
    settings = dict(settings or {})
    names = parse_spec(spec)
    for gradient_method in (n for n in names if METHODS.trait(n, "chooses_rows")):
        if "threshold" not in (settings.get(gradient_method) or {}):
            settings[gradient_method] = {**(settings.get(gradient_method) or {}), "threshold": default_threshold(names)}
    methods = [METHODS.build(n, settings.get(n)) for n in names]
    if not any(m.stage == "model" for m in methods):
        methods.insert(0, Finetune())
    return sorted(methods, key=lambda m: STAGES.index(m.stage))


def method_settings(methods: list[Method]) -> dict[str, dict[str, Any]]:
    """``{name: settings}`` of built methods, every field included (``random_update`` shows its
    ``selection: random``)."""
    return {m.name: to_dict(getattr(m, "config", None)) for m in methods}


def effective_method_settings(
    spec: str, settings: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The settings every method of ``spec`` runs with, defaults included (MIGU's threshold
    from the paper's table for the combination when ``settings`` leave it out): what a run
    records under ``config.methods`` in results.json. Raises like ``build_methods``."""
    return method_settings(build_methods(spec, settings))


def check_method_settings(settings: Any) -> None:
    """Check every ``methods.<name>`` section, also of methods a run does not use (a typo there
    would otherwise be noticed only by the run that needs it): the name is a method, its
    settings are a mapping of that method's fields with values of the right types."""
    if settings is None:
        return
    if not isinstance(settings, dict):
        raise ValueError(f"methods must map method names to their settings, got {settings!r}")
    for name, values in settings.items():
        if name not in METHODS:
            raise ValueError(f"methods.{name}: unknown method; known: {', '.join(METHODS.names())}")
        METHODS.settings(name, values)


def canonical_name(spec: str) -> str:
    """The composed name in stage order, e.g. ``migu`` -> ``finetune+migu``."""
    return "+".join(m.name for m in build_methods(spec))
