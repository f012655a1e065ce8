"""EWC (Kirkpatrick et al., 2017): a quadratic penalty holding each parameter near its value
after earlier tasks, weighted by a diagonal Fisher estimate (squared gradients of the task
loss on a sample of the task's training data, accumulated over tasks)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import Method, TaskContext


@dataclass
class EwcConfig:
    weight: float = 5000.0
    """lambda: strength of the penalty lambda/2 * sum F (theta - theta*)^2."""
    fisher_examples: int = 256
    """Training examples of each finished task used to estimate the Fisher diagonal."""

    def __post_init__(self) -> None:
        if self.weight < 0 or self.fisher_examples < 1:
            raise ValueError(f"EWC needs weight >= 0 and fisher_examples >= 1; got {self}")


class Ewc(Method):
    name = "ewc"
    stage = "loss"

    def __init__(self, config: EwcConfig | None = None) -> None:
        self.config = config or EwcConfig()
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def extra_loss(self, model: nn.Module, ctx: TaskContext) -> torch.Tensor | None:
        if not self.fisher:
            return None
        terms = [
            (self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
            for n, p in model.named_parameters()
            if n in self.fisher and p.requires_grad
        ]
        return 0.5 * self.config.weight * torch.stack(terms).sum() if terms else None

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        if ctx.batch_loss is None:
            raise ValueError("EWC needs the task format's loss (TaskContext.batch_loss)")
        sample = random.Random(f"ewc:{ctx.seed}:{ctx.index}").sample(
            ctx.task.train, min(self.config.fisher_examples, len(ctx.task.train))
        )
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        chunks = [sample[i : i + ctx.micro_batch_size] for i in range(0, len(sample), ctx.micro_batch_size)]
        was_training = model.training
        model.eval()  # no dropout in the estimate
        for chunk in chunks:
            model.zero_grad(set_to_none=True)
            ctx.batch_loss(model, chunk).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().pow(2) / len(chunks)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        for n, f in fisher.items():
            self.fisher[n] = self.fisher[n] + f if n in self.fisher else f
            self.anchor[n] = params[n].detach().clone()
        return {"fisher_mean": float(torch.stack([f.mean() for f in self.fisher.values()]).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = dict(state.get("fisher", {})), dict(state.get("anchor", {}))
