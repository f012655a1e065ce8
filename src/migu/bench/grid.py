"""A grid of runs (``method=a,b``, ``seed=0,1,2``): expanded, checked whole before its first run
starts, then run one after another with the lock handling that ``migu run`` and the benchmark
scripts share.

The check covers what would otherwise fail minutes or hours into a grid: every run's config
(types, unknown keys, every ``methods.<name>`` section), every method spec with its effective
settings (MIGU's threshold included), the evaluators for the task kind, the model (packaged,
cached or local) and MIGU's include/exclude patterns against the model's layer names, on a
skeleton of the model built from its config without loading or initialising weights.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from .config import RunConfig, run_config

_VARIED = ("method", "seed")


def expand(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One raw config per combination of ``method`` and ``seed`` (each a list, or comma-separated);
    values are checked when each is turned into a ``RunConfig``."""

    def values(key: str) -> list[Any]:
        v = raw.get(key)
        if isinstance(v, str) and "," in v:
            return [x.strip() for x in v.split(",")]
        return v if isinstance(v, list) else [v]

    runs = []
    for method, seed in itertools.product(*(values(k) for k in _VARIED)):
        one = dict(raw)
        for key, value in zip(_VARIED, (method, seed), strict=True):
            if value is not None:
                one[key] = value
        runs.append(one)
    return runs


def check_grid(raw: dict[str, Any]) -> list[RunConfig]:
    """Every run of the grid as a checked ``RunConfig`` (see ``check_runs``); the first mistake
    is a ValueError (or FileNotFoundError, ModuleNotFoundError) naming the key."""
    configs = [run_config(one) for one in expand(raw)]
    check_runs(configs)
    return configs


def check_runs(configs: Iterable[RunConfig]) -> None:
    """What ``run_config`` cannot see alone: each method spec and its effective settings, the
    evaluators for the data's task kind, the model's existence, MIGU's layer patterns."""
    from ..data.base import source_kind
    from ..evaluators import check_evaluators
    from ..methods.registry import build_methods
    from ..models.loading import TINY, model_config

    seen: set[str] = set()
    for config in configs:
        methods = build_methods(config.method, config.methods)
        check_evaluators(config.evaluators, source_kind(config.data))
        _check_methods(config, methods)
        key = json.dumps([config.model, config.method, config.methods], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        if config.model.startswith("tiny-") and config.model not in TINY:
            raise ValueError(f"model {config.model!r}: the tiny test models are {', '.join(TINY)}")
        if any(_migu_config(m) is not None for m in methods):
            check_layers(config.model, methods)
        elif not config.model.startswith("tiny-"):
            model_config(config.model)


def _check_methods(config: RunConfig, methods: list[Any]) -> None:
    """Each method's ``check_sequence`` where the number of tasks is known before the data loads
    (``sources.task_count``; the runner checks the loaded sequence too), and ``save_model``."""
    from ..data.base import task_count
    from ..methods.compose import MethodStack

    stack = MethodStack(methods)
    num_tasks = task_count(config.data)
    if num_tasks is not None:
        stack.check_sequence(num_tasks)
    if config.save_model:
        stack.check_save_model()


def _migu_config(method: Any) -> Any:
    from ..methods.migu_method import Migu

    return method.config.core if isinstance(method, Migu) else None


def skeleton(name: str) -> nn.Module:
    """The model ``name`` with its layers and names but no loaded weights: built on the meta
    device from its config, then given uninitialised CPU storage (which ties need: tied weights
    share it) and re-tied. Tiny test models are simply built."""
    import torch

    from ..models.loading import arch_of, auto_class, load_model, model_config

    if name.startswith("tiny-"):
        return load_model(name).model
    config = model_config(name)
    with torch.device("meta"):
        model = auto_class(arch_of(config)).from_config(config)
    model = model.to_empty(device="cpu")
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()
    return model


def check_layers(model_name: str, methods: list[Any]) -> None:
    """MIGU's preset and include/exclude patterns against the layers of ``model_name`` as the
    methods set it up (under LoRA, PEFT's layer names), as ``migu.core`` resolves them."""
    from ..core.targets import find_sources

    with warnings.catch_warnings():  # a throwaway model: its libraries' notices are the run's to give
        warnings.simplefilter("ignore")
        model: nn.Module = skeleton(model_name)
        for method in methods:
            model = method.setup(model)
    for method in methods:
        core = _migu_config(method)
        if core is None:
            continue
        try:
            find_sources(model, core)
        except ValueError as err:
            raise ValueError(f"methods.{method.name} on {model_name}: {err}") from None


def run_one(config: RunConfig, wait: float = 0.0, **run_options: Any) -> dict[str, Any] | None:
    """Run (or resume, or reload) one run (``run_options`` go to ``migu.bench.run``, e.g.
    ``on_task_end``). If another process holds it: ``None`` when ``wait`` is 0, else wait for
    that process, polling every ``wait`` seconds, and return its results."""
    from . import RunInProgress, run  # (wherever the runner keeps them)

    while True:
        try:
            return run(config, **run_options)
        except RunInProgress as err:
            if not wait:
                print(f"   skipped: {err}", flush=True)
                return None
            time.sleep(wait)


def run_grid(
    configs: list[RunConfig], on_result: Callable[[RunConfig, dict[str, Any]], None] | None = None
) -> tuple[list[tuple[RunConfig, dict[str, Any]]], list[str]]:
    """Run each config in turn; a run another process holds is skipped (so two processes given
    the same grid share it). Returns the finished ``(config, results)`` and the skipped names."""
    done, busy = [], []
    for config in configs:
        print(f"== {config.run_name()}", flush=True)
        result = run_one(config)
        if result is None:
            busy.append(config.run_name())
            continue
        if on_result is not None:
            on_result(config, result)
        done.append((config, result))
    return done, busy
