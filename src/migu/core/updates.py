"""What ``update`` mode restores after the step, and the update-leak diagnostic.

Both work on this rank's rows of each weight: the weight itself in one process or under DDP, its
shard under FSDP2 (a DTensor sharded by rows), with the matching rows of the full-layer mask.
"""

from __future__ import annotations

import torch

from .sharding import local, local_mask
from .targets import Source, Target, shaped


class UpdateKeeper:
    """Saves masked weights before the optimizer step and restores their masked rows after it."""

    def __init__(self, restore: bool, measure_leak: bool, bias: bool) -> None:
        self.restore = restore  # update mode
        self.measure_leak = measure_leak
        self.bias = bias  # also restore the bias of masked rows (mask_bias)
        # (target, local mask, local weight, local bias) per masked weight of the step
        self._pending: list[tuple[Target, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._leak_pending: list[tuple[Target, torch.Tensor, torch.Tensor]] = []
        self._leak: list[torch.Tensor] = []  # running [masked, total] squared update, on the device

    @property
    def needed(self) -> bool:
        return self.restore or self.measure_leak

    def save(self, target: Target, shaped_keep: torch.Tensor) -> None:
        """Before the step: this rank's part of the weight (and bias), and of its mask."""
        if not self.needed:
            return
        weight = target.weight.detach()
        mask = local_mask(weight, shaped_keep)
        if self.restore:
            bias = target.bias.detach() if self.bias and target.bias is not None else None
            saved_bias = local(bias).clone() if bias is not None else None
            self._pending.append((target, mask, local(weight).clone(), saved_bias))
        if self.measure_leak:
            self._leak_pending.append((target, mask, local(weight).clone()))

    def save_selected(self, sources: list[Source], keeps: list[torch.Tensor | None]) -> None:
        """Before a step whose gradients were masked during backward: save every weight with rows
        chosen (``keeps``, per source)."""
        if not self.needed:
            return
        targets = [(i, t) for i, s in enumerate(sources) for t in s.targets if t.weight.requires_grad]
        if self.restore and not any(t.weight.grad is not None for _, t in targets):
            raise RuntimeError(
                "MIGU update mode restores the masked rows of the module's weights after the step, but no "
                "weight has a .grad: this engine keeps its own master weights (DeepSpeed ZeRO) and would "
                "overwrite them. Use mask_mode='grad'"
            )
        for i, target in targets:
            keep = keeps[i]
            if keep is not None:
                self.save(target, shaped(target, keep))

    def after_step(self) -> None:
        """Restore the masked rows (update mode) and add the step's update to the leak measure."""
        for target, mask, weight, bias in self._pending:
            w = local(target.weight.detach())
            w.copy_(torch.where(mask, w, weight))
            if bias is not None and target.bias is not None:
                b = local(target.bias.detach())
                b.copy_(torch.where(mask.reshape(-1), b, bias))
        self._pending.clear()
        for target, mask, before in self._leak_pending:
            delta = (local(target.weight.detach()) - before).float().pow(2)
            step = torch.stack([(delta * ~mask).sum(), delta.sum()])
            self._leak = [self._leak[0] + step] if self._leak else [step]
        self._leak_pending.clear()

    def leak(self) -> float | None:
        if not self._leak:
            return None
        masked, total = self._leak[0].tolist()
        return masked / total if total > 0 else 0.0

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"leak": self._leak[0].cpu() if self._leak else None}

    def load_state_dict(self, state: dict[str, torch.Tensor | None], device: torch.device) -> None:
        leak = state.get("leak")
        self._leak = [leak.to(device)] if leak is not None else []

    def clear_leak(self) -> None:
        self._leak.clear()

    def drop(self) -> None:
        """Forget what was saved (the handle is removed)."""
        self._pending.clear()
        self._leak_pending.clear()
