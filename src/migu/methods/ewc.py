"""EWC (Kirkpatrick et al., 2017): a quadratic penalty holding each parameter near its value
after earlier tasks, weighted by a diagonal Fisher estimate: the mean over a sample of the
task's training examples of each example's squared loss gradient (the empirical Fisher),
summed over finished tasks.

Squaring the gradient of a batch's *mean* loss instead (as some implementations do, because it
is cheaper) estimates a different, smaller quantity: the per-example gradients partly cancel
before squaring. On MiniLM and dbpedia that estimate was 9x to 14x smaller with batches of 64
(two samples of 128 examples; benchmarks/ewc_fisher.py), so the same ``weight`` would regularise
about an order of magnitude less and would change with the batch size.
``fisher_batch_size`` > 1 selects it anyway, for speed."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import METHODS, Method, TaskContext


@dataclass
class EwcConfig:
    weight: float = 5000.0
    """lambda: strength of the penalty lambda/2 * sum F (theta - theta*)^2."""
    fisher_examples: int = 128
    """Training examples of each finished task used to estimate the Fisher diagonal."""
    fisher_batch_size: int = 1
    """Examples per squared gradient: 1 is the empirical Fisher (one backward per example);
    larger batches are faster but square the gradient of the batch's mean loss, a smaller
    estimate that depends on the batch size."""

    def __post_init__(self) -> None:
        if self.weight < 0 or self.fisher_examples < 1 or self.fisher_batch_size < 1:
            raise ValueError(f"EWC needs weight >= 0, fisher_examples >= 1 and fisher_batch_size >= 1; got {self}")


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
        named = dict(_named_parameters(model))
        if not named.keys() & self.fisher.keys():  # a penalty matching nothing would switch EWC off silently
            raise ValueError(
                f"EWC: none of the {len(self.fisher)} parameters its Fisher was computed for (e.g. "
                f"{next(iter(self.fisher))!r}) is in the model it is asked to regularise"
            )
        for n, p in named.items():  # a resumed run loads them on the CPU
            if n in self.fisher and self.fisher[n].device != p.device:
                self.fisher[n], self.anchor[n] = self.fisher[n].to(p.device), self.anchor[n].to(p.device)
        terms = [(self.fisher[n] * (p - self.anchor[n]).pow(2)).sum()
                 for n, p in named.items() if n in self.fisher and p.requires_grad]  # fmt: skip
        if not terms:  # e.g. under inc_lora: the parameters it protects are frozen and cannot move
            return None
        return 0.5 * self.config.weight * torch.stack(terms).sum()

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        if ctx.batch_loss is None:
            raise ValueError("EWC needs the task format's loss (TaskContext.batch_loss)")
        if ctx.index == ctx.num_tasks - 1:
            return {}  # no later task to protect this one from
        sample = random.Random(f"ewc:{ctx.seed}:{ctx.index}").sample(
            ctx.task.train, min(self.config.fisher_examples, len(ctx.task.train))
        )
        params = {n: p for n, p in _named_parameters(model) if p.requires_grad}
        fisher = empirical_fisher(model, ctx.batch_loss, sample, params, self.config.fisher_batch_size)
        for n, f in fisher.items():
            self.fisher[n] = self.fisher[n] + f if n in self.fisher else f
            self.anchor[n] = params[n].detach().clone()
        return {"fisher_mean": float(torch.stack([f.mean() for f in self.fisher.values()]).mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = dict(state.get("fisher", {})), dict(state.get("anchor", {}))


def empirical_fisher(model: nn.Module, batch_loss: Any, sample: list[Any], params: Mapping[str, torch.Tensor],
                     batch_size: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """The diagonal empirical Fisher of ``params`` over ``sample``: the mean over chunks of
    ``batch_size`` examples (1: per example, the empirical Fisher proper) of the squared gradient
    of ``batch_loss(model, chunk)``; in eval mode (no dropout), gradients cleared afterwards."""
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    chunks = [sample[i : i + batch_size] for i in range(0, len(sample), batch_size)]
    was_training = model.training
    model.eval()
    try:
        for chunk in chunks:
            model.zero_grad(set_to_none=True)
            batch_loss(model, chunk).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().pow(2) / len(chunks)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return fisher


def _named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The model's parameters under the names of the unwrapped model: the wrappers of DDP or FSDP
    (``module.``) and torch.compile (``_orig_mod.``) prefix them."""
    for name, param in model.named_parameters():
        while name.startswith(("module.", "_orig_mod.")):
            name = name.split(".", 1)[1]
        yield name, param


METHODS.register("ewc", Ewc, EwcConfig)
