"""Evaluators: (model, task) -> named scores, each with a direction.

An evaluator is built by name from ``REGISTRY`` with its settings (a dataclass, so an unknown key
is an error when the config is loaded, not after an hour of training). Two shapes:

- per task (``per_task = True``): ``evaluate(model, fmt, examples, ctx)`` scores one task's
  evaluation split; the runner fills one T + 1 by T score matrix per score name;
- a suite (``per_task = False``): ``evaluate(model, fmt, None, ctx)`` scores the model once per
  evaluation point on benchmarks of its own (general abilities); it returns ``{score: {column:
  value}}`` and the runner keeps one row per evaluation point.

Under several processes every rank calls ``evaluate`` with the whole split; an evaluator shards
it (``shard``) and combines the ranks' partial results (``gather``), so that all ranks return the
same scores and only rank 0 writes them.

Kept samples (for standard errors, ``migu forgetting``): an evaluator whose score is the mean of
per-item values may have a ``samples`` attribute, None by default; set to a dict, each
``evaluate`` call records ``samples[score][column]``, the values of the items it scored, on the
score's scale (``pass_at_1``: 0 or 100 per problem, column the task; ``lm_eval``: per document).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..precision import autocast
from ..registry import Registry


@dataclass(frozen=True)
class ScoreSpec:
    """A score's name and direction (``higher_is_better`` False for a loss or a perplexity)."""

    name: str
    higher_is_better: bool


@dataclass
class EvalContext:
    """What an evaluator may read besides the model and the examples."""

    batch_size: int = 64
    mixed_precision: str = "no"
    progress: bool = False
    desc: str = ""
    tokenizer: Any = None
    arch: str = ""
    rank: int = 0
    world_size: int = 1
    task: Any = None
    """The ``Task`` being scored (per-task evaluators that need more than its evaluation split,
    e.g. ``end_task`` reads ``task.extras["end_task"]``)."""


class Evaluator(Protocol):
    name: str
    per_task: bool
    final_only: bool
    """Scored only after the last task (``end_task`` under the DAS protocol)."""

    def specs(self) -> list[ScoreSpec]:
        """The scores this evaluator returns, with their directions."""
        ...

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        """Per task: ``{score: value}``; a suite: ``{score: {column: value}}``."""
        ...


Samples = dict[str, dict[str, list[float]]]
"""Per-item results of one evaluation point: score name -> column -> one value per item."""


@runtime_checkable
class KeepsSamples(Protocol):
    """An evaluator that can keep each item's result (lm-eval's documents, pass@1's problems), for
    the paired per-item intervals between two models. The caller sets ``samples`` to ``{}`` before
    ``evaluate`` and reads it after; ``None`` (the default) keeps nothing."""

    samples: Samples | None


EVALUATORS: Registry[Evaluator] = Registry("evaluator", "evaluators")
"""Evaluators by name; each evaluator's module registers it with its settings dataclass (or none)
and the trait ``kinds``: the task kinds it can score (empty: any, e.g. a suite that brings its
own data)."""
DEFAULTS: dict[str, tuple[str, ...]] = {"options": ("classification",), "corpus": ("lm_loss",),
                                        "instruction": ("lm_loss",)}  # fmt: skip


def register_evaluator(
    name: str, factory: Callable[..., Evaluator], config: type | None = None, kinds: tuple[str, ...] = ()
) -> None:
    """Make ``name`` usable in a run's ``evaluators`` (``EVALUATORS``); ``factory(settings)``
    builds it (``factory()`` when it has no settings)."""
    EVALUATORS.register(name, factory, config, kinds=tuple(kinds))


def normalize(spec: Any) -> dict[str, dict[str, Any]]:
    """``[a, b]``, ``"a,b"`` or ``{a: {settings}, b: null}`` -> ``{name: settings}``."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if isinstance(spec, list | tuple):
        spec = dict.fromkeys(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"evaluators must be a list of names or a mapping of name to settings; got {spec!r}")
    return {str(k): dict(v or {}) for k, v in spec.items()}


def check_evaluators(spec: Any, kind: str | None = None) -> dict[str, dict[str, Any]]:
    """Check names, settings and task kind without building anything (config load time)."""
    chosen = normalize(spec)
    for name, values in chosen.items():
        EVALUATORS.settings(name, values)  # (an unknown name or setting: one line naming it)
        kinds = EVALUATORS.trait(name, "kinds")
        if kind is not None and kinds and kind not in kinds:
            raise ValueError(f"evaluator {name!r} scores {', '.join(kinds)} tasks, not {kind} tasks")
    return chosen


def build_evaluators(spec: Any, kind: str) -> list[Evaluator]:
    """The evaluators of a run: the named ones, or the task kind's defaults (``DEFAULTS``)."""
    chosen = check_evaluators(spec, kind) or {n: {} for n in DEFAULTS[kind]}
    return [EVALUATORS.build(name, values) for name, values in chosen.items()]


@contextmanager
def evaluating(model: nn.Module, ctx: EvalContext) -> Iterator[None]:
    """Eval mode, no gradients and (with ``mixed_precision=bf16``) autocast; the model's former
    mode is restored however the block ends."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), autocast(ctx.mixed_precision, device):
            yield
    finally:
        model.train(was_training)


def batch_starts(count: int, ctx: EvalContext) -> Iterable[int]:
    """The start of each evaluation batch of ``count`` items (a progress bar when asked)."""
    return tqdm(range(0, count, ctx.batch_size), desc=f"eval {ctx.desc}".strip(), unit="batch",
                disable=not ctx.progress, leave=False)  # fmt: skip


def shard(items: Sequence[Any], ctx: EvalContext) -> list[Any]:
    """This rank's share of ``items`` (every ``world_size``-th item)."""
    return list(items[ctx.rank :: ctx.world_size])


def gather(value: Any, ctx: EvalContext) -> list[Any]:
    """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
    if ctx.world_size == 1:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, value)
    return out
