"""``osf``: Orthogonal Subspace Fine-tuning (Nayak et al., "Sculpting Subspaces", 2025) through
PEFT's own ``OSFConfig`` (PEFT >= 0.21; nothing of it is reimplemented here).

Each target weight is split by its SVD: the top ``effective_rank`` singular directions are frozen
and the rest is trained, with gradients projected orthogonal to the frozen directions. For a
sequence, as in PEFT's continual-learning example, each task gets a fresh OSF wrapping with a
larger preserved fraction: before task t the previous task's update is merged into the weights
(``merge_and_unload``) and OSF is applied again with ``effective_rank`` moving linearly from
``first_rank`` (task 1) to ``last_rank`` (the last task), as fractions of each weight's smaller
dimension. Merging rewrites weights that no parameter of the next wrapping trains, so the method
declares ``rewrites_weights``: its run's checkpoints hold every weight.

OSF trains SVD factors, not weight rows, so it is not combined with a row score (``+migu`` is
refused with one line). Evaluation runs a merged copy of the model (``merged_eval``): the same
outputs to rounding, without the extra low-rank product PEFT's layer adds to every forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.loading import quiet_peft
from .base import METHODS, Method, TaskContext


@dataclass
class OsfMethodConfig:
    first_rank: float = 0.3
    """Preserved fraction of each weight's singular directions on the first task."""
    last_rank: float = 0.7
    """Preserved fraction on the last task (linear in between)."""
    target_modules: list[str] | None = None
    """Module names to wrap; by default PEFT's choice for the model type (else every linear layer)."""
    merged_eval: bool = True
    """Evaluate through a copy with the task's update merged into the weights: PEFT's OSF layer
    adds a low-rank product to every forward, so on MiniLM the merged copy evaluated 2.1-3.2x
    faster, with the same scores to the bit (BENCHMARKS.md); it holds one more copy of the
    weights while evaluating (turn it off where memory is short; off under several processes)."""

    def __post_init__(self) -> None:
        for name in ("first_rank", "last_rank"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name} must be a fraction in (0, 1), got {value}")
        if self.last_rank < self.first_rank:
            raise ValueError(f"last_rank ({self.last_rank}) must be at least first_rank ({self.first_rank})")


def task_rank(config: OsfMethodConfig, index: int, num_tasks: int) -> float:
    """The preserved fraction for task ``index`` (0-based) of ``num_tasks``."""
    if num_tasks < 2:
        return config.first_rank
    return config.first_rank + (config.last_rank - config.first_rank) * index / (num_tasks - 1)


class Osf(Method):
    """A new OSF wrapping per task, the previous one merged first (PEFT's continual recipe)."""

    name = "osf"
    stage = "model"
    rewrites_weights = True

    def __init__(self, config: OsfMethodConfig | None = None) -> None:
        self.config = config or OsfMethodConfig()

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        from peft import OSFConfig, PeftModel, get_peft_model

        if isinstance(model, PeftModel):  # the previous task's OSF: its update into the weights
            model = model.merge_and_unload()
        rank = task_rank(self.config, ctx.index, ctx.num_tasks)
        targets: Any = list(self.config.target_modules) if self.config.target_modules else None
        with quiet_peft():
            return get_peft_model(model, OSFConfig(effective_rank=rank, target_modules=targets))

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        from peft import PeftModel

        several = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not self.config.merged_eval or several or not isinstance(model, PeftModel):
            return model
        with torch.no_grad():  # (merge_and_unload on a copy: the trained wrapping stays as it is)
            return copy.deepcopy(model).merge_and_unload()


METHODS.register("osf", Osf, OsfMethodConfig, decides_training=True, masks_rows=False)
