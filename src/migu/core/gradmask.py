"""A step's gradient masking, done once per gradient: which gradients were masked, which grew again."""

from __future__ import annotations

import torch

from .sharding import local, local_mask
from .targets import Target


class GradMasks:
    """Multiplies weight (and bias) gradients by the step's 0/1 masks, each once per step unless a
    later backward added to it (``mark_stale``); a sharded gradient (FSDP2) by the rows of the mask
    its rank owns."""

    def __init__(self) -> None:
        self._done: set[tuple[int, bool]] = set()  # (id(target), bias?) masked this step
        self._stale: set[int] = set()  # id() of gradients that grew again after being masked

    def apply(self, target: Target, bias: bool, shaped: torch.Tensor, in_backward: bool = False) -> None:
        param = target.bias if bias else target.weight
        grad = None if param is None else param.grad
        if grad is None or (not in_backward and (id(target), bias) in self._done and id(param) not in self._stale):
            return
        mask = local_mask(grad, shaped)
        local(grad).mul_(mask.to(grad.dtype))
        self._done.add((id(target), bias))
        if in_backward:
            self._stale.discard(id(param))

    def mark_stale(self, param: torch.Tensor, entries: list[tuple[int, Target, bool]]) -> None:
        if any((id(t), b) in self._done for _, t, b in entries):
            self._stale.add(id(param))

    def clear(self) -> None:
        self._done.clear()
        self._stale.clear()
