"""Methods by name, composed with ``+`` (``finetune+migu``, later ``lora+replay+migu``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..settings import from_mapping, to_dict
from .base import STAGES, Method
from .derpp import Derpp, DerppConfig
from .ewc import Ewc, EwcConfig
from .finetune import Finetune, FinetuneConfig
from .lora import IncLora, Lora, LoraMethodConfig, OLora, OLoraConfig
from .migu_method import Migu, MiguMethodConfig, RandomUpdate
from .moelora import MoeLora, MoeLoraConfig
from .replay import Replay, ReplayConfig


def _plain(cls: type[Method], config_cls: type) -> Callable[[dict[str, Any]], Method]:
    def build(settings: dict[str, Any]) -> Method:
        return cls(_checked(config_cls, settings, cls.name))  # type: ignore[call-arg]

    return build


def _checked(config_cls: type, settings: Any, name: str) -> Any:
    """The method's settings dataclass from ``methods.<name>``; its own checks' errors are
    prefixed with that key, so that every message names where to look."""
    try:
        return from_mapping(config_cls, settings, f"methods.{name}")
    except TypeError as err:  # a check of the dataclass itself, on a type from_mapping leaves alone
        raise ValueError(f"methods.{name}: {err}") from None
    except ValueError as err:
        message = str(err)
        raise ValueError(message if "methods." in message else f"methods.{name}: {message}") from None


REGISTRY: dict[str, Callable[[dict[str, Any]], Method]] = {
    "finetune": _plain(Finetune, FinetuneConfig),
    "lora": _plain(Lora, LoraMethodConfig),
    "inc_lora": _plain(IncLora, LoraMethodConfig),
    "olora": _plain(OLora, OLoraConfig),
    "moelora": _plain(MoeLora, MoeLoraConfig),
    "replay": _plain(Replay, ReplayConfig),
    "ewc": _plain(Ewc, EwcConfig),
    "derpp": _plain(Derpp, DerppConfig),
    "migu": lambda s: Migu(MiguMethodConfig.from_dict(s, "methods.migu")),
    "random_update": lambda s: RandomUpdate(MiguMethodConfig.from_dict(s, "methods.random_update")),
}
"""Method name -> builder from its settings (``methods.<name>``, a dict)."""

SETTINGS: dict[str, type] = {
    "finetune": FinetuneConfig,
    "lora": LoraMethodConfig,
    "inc_lora": LoraMethodConfig,
    "olora": OLoraConfig,
    "moelora": MoeLoraConfig,
    "replay": ReplayConfig,
    "ewc": EwcConfig,
    "derpp": DerppConfig,
    "migu": MiguMethodConfig,
    "random_update": MiguMethodConfig,
}
"""Method name -> its settings dataclass (for help texts and documentation)."""


def parse_spec(spec: str) -> list[str]:
    """``"finetune+migu"`` -> ``["finetune", "migu"]``, checked against the registry."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if not names:
        raise ValueError("empty method name; e.g. 'finetune' or 'finetune+migu'")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"method: unknown method(s) {unknown} in {spec!r}; known: {', '.join(sorted(REGISTRY))}")
    if len(set(names)) != len(names):
        raise ValueError(f"method {spec!r} names a method twice")
    if "migu" in names and "random_update" in names:
        raise ValueError("migu and random_update both choose the rows to update: use one of them")
    models = [n for n in names if n in ("finetune", "lora", "inc_lora", "olora", "moelora")]
    if len(models) > 1:
        raise ValueError(f"{spec!r} names {len(models)} methods that decide what trains ({models}): use one")
    return names


def default_threshold(names: list[str]) -> float:
    """The paper's T per combination: 0.1 with O-LoRA, 0.4 with replay, else 0.7."""
    if "olora" in names:
        return 0.1
    return 0.4 if "replay" in names else 0.7


def build_methods(spec: str, settings: dict[str, dict[str, Any]] | None = None) -> list[Method]:
    """Build the composed methods, ordered by stage; ``settings[name]`` configures each one.

    Without a method that decides what trains (``finetune``, later ``lora`` ...), ``finetune``
    is implied, so ``migu`` alone means ``finetune+migu``. Each method's ``config`` holds its
    effective settings, defaults included (``method_settings``).
    """
    settings = dict(settings or {})
    names = parse_spec(spec)
    for gradient_method in ("migu", "random_update"):
        if gradient_method in names and "threshold" not in (settings.get(gradient_method) or {}):
            settings[gradient_method] = {**(settings.get(gradient_method) or {}), "threshold": default_threshold(names)}
    methods = [REGISTRY[n](dict(settings.get(n) or {})) for n in names]
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
        if name not in REGISTRY:
            raise ValueError(f"methods.{name}: unknown method; known: {', '.join(sorted(REGISTRY))}")
        REGISTRY[name](values if values is not None else {})


def canonical_name(spec: str) -> str:
    """The composed name in stage order, e.g. ``migu`` -> ``finetune+migu``."""
    return "+".join(m.name for m in build_methods(spec))
