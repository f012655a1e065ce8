"""The moments of the training loop that continual-learning methods plug into.

A method implements only the moments it needs; each returns a value (the model to train, the
examples to train on, a loss term, diagnostics) instead of mutating shared state. Methods are
composed as a list, in the order of their ``stage``: model wrappers (LoRA) first, then data
(replay), then loss terms, then gradient editing (MIGU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.tasks import Example, Task
from ..registry import Registry

STAGES = ("model", "data", "loss", "gradient")


def task_seed(seed: int, index: int) -> int:
    """The seed of the task at ``index`` (0-based) in a run of ``seed``: the loop's data order and
    dropout, and each method's own draws (offset by a constant of its own), are seeded from it, so
    a resumed run draws as an uninterrupted one."""
    return 1000 * seed + index


@dataclass
class TaskContext:
    """What a method may read about the current task."""

    index: int  # 0-based position in the sequence
    task: Task
    num_tasks: int
    seed: int
    micro_batches_per_step: int | None = None  # the loop's gradient accumulation, when known
    batch_loss: Callable[[nn.Module, list[Example]], torch.Tensor] | None = None
    """The task format's training loss of a list of examples (for methods such as EWC)."""
    micro_batch_size: int = 16
    format: Any = None
    """The task format itself (``batch``, ``loss``; DER++ uses its ``snapshot``/``replay_losses``)."""


class Method:
    """A continual-learning method: no-op moments, overridden as needed."""

    name = "method"
    stage = "loss"
    own_layers = False
    """Whether the method puts layers of its own into the model (MoELoRA's mixtures), which
    ``save_pretrained`` writes but Transformers and PEFT cannot load back."""
    rewrites_weights = False
    """Whether the method changes weights that no parameter it trains holds (OSF merges each
    task's update into the base weights): the run's checkpoints then keep every weight."""
    setup_keeps_function = False
    """Whether ``setup`` leaves what the model computes exactly as it was (it only freezes
    parameters, or adds adapters that start as no change), so that the evaluation before training
    is the same as without the method and runs of a grid may share it (``migu.bench.eval_cache``).
    A method that does not override ``setup`` keeps the function whatever this says
    (``keeps_function_at_setup``); one that overrides it declares it here, False by default."""

    def setup(self, model: nn.Module) -> nn.Module:
        """Once, before the first task; returns the model to train (possibly wrapped)."""
        return model

    def check_sequence(self, num_tasks: int) -> None:
        """Before a run starts: a ValueError naming the setting if the method cannot act on a
        sequence of ``num_tasks`` tasks."""

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        """Before training on a task; returns the model to train on it."""
        return model

    def train_examples(self, examples: list[Example], ctx: TaskContext) -> list[Example]:
        """The examples to train on for this task."""
        return examples

    def extra_loss(self, model: nn.Module, ctx: TaskContext) -> torch.Tensor | None:
        """A term added to each micro-batch's loss."""
        return None

    def before_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        """Once per optimizer step, when the gradients are complete: before clipping and the step."""

    def after_optimizer_step(self, model: nn.Module, ctx: TaskContext) -> None:
        """Just after each optimizer step."""

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """After training on a task (before evaluation); returns diagnostics to record."""
        return {}

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate at an evaluation point: ``model`` itself by default. A method
        whose trained form is slow to run may return one that computes the same (OSF: a merged
        copy); training goes on with ``model``, and nothing is saved from the returned one."""
        return model

    def step_log(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """After an optimizer step, in runs that log to trackers (``log_with``) only: values to log
        at that step (MIGU: the share of rows it kept), by short name."""
        return {}

    def artifacts(self, model: nn.Module, ctx: TaskContext) -> dict[str, Mapping[str, Any]]:
        """After a task: arrays to save beside the results, ``{name: {key: array}}`` (e.g. MIGU's
        kept-row masks); the run store writes them (``migu.artifacts``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What must survive a restart (besides the model's weights): at a task boundary, and at an
        epoch end within a task (saved then, loaded after the task's ``before_task`` has run again),
        so that the continued run equals an uninterrupted one."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""


METHODS: Registry[Method] = Registry("method", "methods")
"""Methods by name; each method's module registers it at its end with its settings dataclass
and traits: ``decides_training`` (it chooses what trains: finetune, the LoRA family; one per
spec), ``chooses_rows`` (it masks gradient rows: migu, random_update; one per spec),
``migu_threshold`` (the paper's T for MIGU when combined with it: 0.1 with O-LoRA, 0.4 with
replay)."""


def keeps_function_at_setup(method: Method) -> bool:
    """Whether ``method.setup`` leaves the model's function unchanged: it does not override
    ``Method.setup``, or it declares ``setup_keeps_function``."""
    return type(method).setup is Method.setup or bool(method.setup_keeps_function)
