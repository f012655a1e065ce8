"""MIGU stated plainly: the algorithm in a few lines, slow and obviously right. The tests use it
as the oracle that the fast, sharded, in-backward implementation (``MiguHandle``) must match.

One training step of MIGU (Du et al., 2024) on a model whose linear layers ``names`` it covers:

1. forward: for every such layer, sum ``|output|`` over every token of the batch, per output
   channel (the layer's rows): the channel's magnitude statistic (here in float64);
2. backward, as usual;
3. per layer, keep the weight-gradient rows whose statistic is at or above the T-quantile of the
   layer's statistics (``torch.quantile``, linear interpolation: the top ``1 - T`` of the rows)
   and zero the others; the bias and every other parameter keep their gradients;
4. the optimizer's step.

``reference_step`` does exactly that; ``ReferenceStatistic`` is step 1 on its own (hooks of its
own, optionally counting only the tokens a mask marks, e.g. no padding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TokenMask = Callable[[str, torch.Size], torch.Tensor]


class ReferenceStatistic:
    """``|output|`` per output channel of each named layer, summed over tokens in float64."""

    def __init__(self, model: nn.Module, names: list[str], token_masks: TokenMask | None = None) -> None:
        modules = dict(model.named_modules())
        self.sums: dict[str, torch.Tensor | None] = dict.fromkeys(names)
        self.token_masks = token_masks
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            out = output.detach().double()
            flat = out.reshape(-1, out.shape[-1]).abs()
            if self.token_masks is not None:
                flat = flat[self.token_masks(name, out.shape[:-1]).reshape(-1).bool()]
            total = flat.sum(0)
            previous = self.sums[name]
            self.sums[name] = total if previous is None else previous + total

        return hook

    def kept_rows(self, name: str, threshold: float) -> torch.Tensor:
        """Indices of the rows at or above the T-quantile of the layer's statistic."""
        stat = self.sums[name]
        if stat is None:
            raise ValueError(f"{name} saw no forward pass")
        return (stat >= torch.quantile(stat, threshold)).nonzero().flatten()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def reference_step(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], names: list[str],
                   threshold: float, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:  # fmt: skip
    """One MIGU step (the module docstring) on ``nn.Linear`` layers ``names``; returns the kept
    rows of each layer."""
    statistic = ReferenceStatistic(model, names)
    try:
        loss_of(model).backward()
    finally:
        statistic.remove()
    modules = dict(model.named_modules())
    kept = {}
    for name in names:
        kept[name] = statistic.kept_rows(name, threshold)
        grad = modules[name].weight.grad
        if grad is not None:
            drop = torch.ones(grad.shape[0], dtype=torch.bool, device=grad.device)
            drop[kept[name]] = False
            grad[drop] = 0
    optimizer.step()
    return kept
