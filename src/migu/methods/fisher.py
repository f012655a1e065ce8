"""``fisher``: FGGM (Tan et al., "Fisher-Guided Gradient Masking for Continual Learning", 2026).

At the start of each task the diagonal empirical Fisher of the masked weights is estimated on
that task's training data (the mean of per-example squared gradients of the loss: EWC's estimate,
``ewc.empirical_fisher``) and summed over each row's inputs; the top ``1 - T`` rows of every layer
(T = 0.7: 30% kept) are then the only ones updated for the whole task. The same engine as MIGU
(``selection="given"``), the same first task unmasked by default. Written ``finetune+fisher`` or
``lora+fisher``; ``fisher_examples`` (recorded in the run's settings) sets the sample size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..core.scores import row_sums
from ..settings import check_value
from .base import METHODS, TaskContext
from .ewc import empirical_fisher
from .migu_method import Migu, MiguMethodConfig


@dataclass
class FisherConfig(MiguMethodConfig):
    """MIGU's settings (threshold, layers, modes, ``skip_first_task``) plus the Fisher sample."""

    fisher_examples: int = 128
    """Training examples of the task (a seeded sample) whose squared gradients are averaged."""
    fisher_batch_size: int = 1
    """Examples per squared gradient: 1 is the empirical Fisher (one backward per example)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "methods.fisher") -> FisherConfig:
        values = dict(values or {})
        sizes = {k: check_value(values.pop(k, default), int, f"{where}.{k}")
                 for k, default in (("fisher_examples", 128), ("fisher_batch_size", 1))}  # fmt: skip
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"{where}.{key} must be at least 1, got {value}")
        base = MiguMethodConfig.from_dict(values, where)
        return cls(base.skip_first_task, base.core, **sizes)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "fisher_examples": self.fisher_examples,
                "fisher_batch_size": self.fisher_batch_size}  # fmt: skip


class FisherRows(Migu):
    """Per task: the rows with the largest Fisher mass, fixed for the task (FGGM)."""

    name = "fisher"

    def __init__(self, config: FisherConfig | None = None) -> None:
        config = config or FisherConfig()
        super().__init__(replace(config, core=replace(config.core, selection="given")))
        self.fisher_config = config

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        model = super().before_task(model, ctx)
        assert self.handle is not None
        if self.handle.is_paused:  # (the first task, trained unmasked)
            return model
        if ctx.batch_loss is None:  # a resume replaying a finished task: its scores are not needed, and
            return model  # the checkpoint's (the last task's) are loaded right after
        sample = random.Random(f"fisher:{ctx.seed}:{ctx.index}").sample(
            ctx.task.train, min(self.fisher_config.fisher_examples, len(ctx.task.train))
        )
        with self.handle.paused():  # the estimate's forwards are not training steps
            self.handle.set_row_scores(fisher_rows(model, self.handle.sources, ctx.batch_loss, sample,
                                                   self.fisher_config.fisher_batch_size))  # fmt: skip
        return model

    def state_dict(self) -> dict[str, Any]:
        """Also the task's row scores: a run resumed within a task keeps the mask it started with
        (its ``before_task`` would estimate them on the weights of a later epoch)."""
        state = super().state_dict()
        if self.handle is not None:
            state["row_scores"] = {k: v.cpu() for k, v in self.handle.row_scores().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.handle is not None and state.get("row_scores"):
            self.handle.set_row_scores(state["row_scores"])


def fisher_rows(model: nn.Module, sources: list[Any], batch_loss: Any, sample: list[Any],
                batch_size: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per layer (statistic source): the empirical Fisher of its targets' weights summed over each
    row's inputs (and over the targets of a source with several)."""
    weights = {f"{t.name}.weight": t.weight for s in sources for t in s.targets}
    fisher = empirical_fisher(model, batch_loss, sample, weights, batch_size)
    scores = {}
    for source in sources:
        rows = [row_sums(fisher[f"{t.name}.weight"], t.rows_last) for t in source.targets]
        scores[source.name] = torch.stack(rows).sum(0)
    return scores


METHODS.register("fisher", FisherRows, FisherConfig, chooses_rows=True)
