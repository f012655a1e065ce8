"""The one place that calls the methods' moments, in stage order, always on the same model.

The loop and the runner hold a ``MethodStack`` instead of a list, so every moment is called from
here, with the bare model (never a DDP/FSDP/Accelerate wrapper: methods read and edit parameters,
and a wrapper's names would differ from those a method saw in ``setup``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..data.tasks import Example
from .base import Method, TaskContext, keeps_function_at_setup, task_seed

# seeds the draws of methods' before_task, apart from the loop's per-task seed (``task_seed``)
STRUCTURE_SEED = 7_000_000


class MethodStack:
    """Composed methods (``build_methods``), called moment by moment."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = list(methods)

    def __iter__(self) -> Iterator[Method]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.methods)

    @property
    def rewrites_weights(self) -> bool:
        """Whether a method changes weights outside what it trains (checkpoint every weight)."""
        return any(m.rewrites_weights for m in self.methods)

    @property
    def setup_keeps_function(self) -> bool:
        """Whether ``setup`` leaves the model computing what it did (every method's does): the
        model before training is then the same whatever these methods are."""
        return all(keeps_function_at_setup(m) for m in self.methods)

    def setup(self, model: nn.Module) -> nn.Module:
        for method in self.methods:
            model = method.setup(model)
        return model

    def check_sequence(self, num_tasks: int) -> None:
        for method in self.methods:
            method.check_sequence(num_tasks)

    def check_save_model(self) -> None:
        """A ValueError if the trained model could not be saved to load back (``save_model``)."""
        own = [m.name for m in self.methods if m.own_layers]
        if own:
            raise ValueError(f"save_model: {', '.join(own)} puts layers of its own into the model, which "
                             "Transformers and PEFT cannot load back; leave save_model off")  # fmt: skip

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        # adapters a method adds here (IncLoRA, O-LoRA) start from the same draw whatever ran
        # before in this process (other runs of a sweep, other methods' draws), resumed or not
        torch.manual_seed(STRUCTURE_SEED + task_seed(ctx.seed, ctx.index))
        for method in self.methods:
            model = method.before_task(model, ctx)
        return model

    def train_examples(self, examples: list[Example], ctx: TaskContext) -> list[Example]:
        for method in self.methods:
            examples = method.train_examples(examples, ctx)
        return examples

    def extra_loss(self, model: nn.Module, ctx: TaskContext) -> torch.Tensor | None:
        total = None
        for method in self.methods:
            extra = method.extra_loss(model, ctx)
            if extra is not None:
                total = extra if total is None else total + extra
        return total

    def before_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        for method in self.methods:
            method.before_optimizer_step(model, ctx)

    def after_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        for method in self.methods:
            method.after_optimizer_step(model, ctx)

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return {m.name: m.after_task(model, ctx) for m in self.methods}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The model an evaluation point runs (each method's ``evaluation_model``, in stage order)."""
        for method in self.methods:
            model = method.evaluation_model(model)
        return model

    def step_log(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """Every method's ``step_log``, as ``method/name``."""
        return {f"{m.name}/{key}": value for m in self.methods for key, value in m.step_log(model, ctx).items()}

    def artifacts(self, model: nn.Module, ctx: TaskContext) -> dict[str, dict[str, Mapping[str, Any]]]:
        """``{method: {artifact name: arrays}}`` of the methods that have any."""
        out = {}
        for method in self.methods:
            items = method.artifacts(model, ctx)
            if items:
                out[method.name] = dict(items)
        return out

    def state_dict(self) -> list[dict[str, Any]]:
        return [m.state_dict() for m in self.methods]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for method, state in zip(self.methods, states, strict=True):
            method.load_state_dict(state)
