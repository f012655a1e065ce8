"""Methods by name, composed with ``+`` (``finetune+migu``, later ``lora+replay+migu``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from .base import STAGES, Method
from .ewc import Ewc, EwcConfig
from .finetune import Finetune, FinetuneConfig
from .lora import IncLora, Lora, LoraMethodConfig, OLora, OLoraConfig
from .migu_method import Migu, MiguMethodConfig, RandomUpdate
from .moelora import MoeLora, MoeLoraConfig
from .replay import Replay, ReplayConfig


def _plain(cls: type[Method], config_cls: type) -> Callable[[dict[str, Any]], Method]:
    def build(settings: dict[str, Any]) -> Method:
        known = {f.name for f in fields(config_cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for method {cls.name!r}; known: {sorted(known)}")
        return cls(config_cls(**settings))  # type: ignore[call-arg]

    return build


REGISTRY: dict[str, Callable[[dict[str, Any]], Method]] = {
    "finetune": _plain(Finetune, FinetuneConfig),
    "lora": _plain(Lora, LoraMethodConfig),
    "inc_lora": _plain(IncLora, LoraMethodConfig),
    "olora": _plain(OLora, OLoraConfig),
    "moelora": _plain(MoeLora, MoeLoraConfig),
    "replay": _plain(Replay, ReplayConfig),
    "ewc": _plain(Ewc, EwcConfig),
    "migu": lambda s: Migu(MiguMethodConfig.from_dict(s)),
    "random_update": lambda s: RandomUpdate(MiguMethodConfig.from_dict(s)),
}


def parse_spec(spec: str) -> list[str]:
    """``"finetune+migu"`` -> ``["finetune", "migu"]``, checked against the registry."""
    names = [n.strip() for n in spec.split("+") if n.strip()]
    if not names:
        raise ValueError("empty method name; e.g. 'finetune' or 'finetune+migu'")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} in {spec!r}; known: {', '.join(sorted(REGISTRY))}")
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
    is implied, so ``migu`` alone means ``finetune+migu``.
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


def canonical_name(spec: str) -> str:
    """The composed name in stage order, e.g. ``migu`` -> ``finetune+migu``."""
    return "+".join(m.name for m in build_methods(spec))
