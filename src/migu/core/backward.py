"""Masking inside backward: the step's rows chosen when its last backward starts, and gradients
masked as autograd produces them.

Two mechanisms, both owned by a ``MiguHandle``:

* ``BackwardStart`` notices when a backward pass starts (a gradient hook on the model's outputs,
  which autograd reaches before any weight) and counts the step's backward passes. There, with the
  statistic of every forward of the step complete, the handle chooses the rows (one all-reduce
  across ranks, before any engine starts reducing gradients): for the fast path, and for
  ``mask_timing="in_backward"``, whose gradient hooks on every masked weight and bias then
  multiply the gradient of that backward by the mask before it is accumulated, so that an engine
  consuming gradients in its own hooks (DeepSpeed ZeRO) sees it masked.
* ``AccumulatedMasking`` (``handle.mask_in_next_backward`` / ``mask_in_backward(when)``, one
  process): masks ``.grad`` right after a backward has accumulated it, for loops that clip between
  the last backward and the step. Exact with accumulation, since ``.grad`` holds every micro-batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import MiguConfig
from .runtime import current_backward, distributed_world
from .targets import Source, Target, shaped


class Host(Protocol):
    """What the masking machinery needs of the handle."""

    config: MiguConfig
    sources: list[Source]

    @property
    def active(self) -> bool: ...  # neither paused nor masked for this step

    def decide(self, strict: bool = False) -> list[torch.Tensor | None]: ...

    def decides_in_backward(self) -> bool: ...

    def mask_grad(self, target: Target, bias: bool, shaped: torch.Tensor, in_backward: bool = False) -> None: ...

    def mark_stale(self, param: torch.Tensor, entries: list[tuple[int, Target, bool]]) -> None: ...


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a model's output (a tensor, a tuple/list, a dict or a ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class BackwardStart:
    """Finds the start of each backward pass and, with ``in_backward`` timing, masks gradients."""

    def __init__(self, host: Host, root: nn.Module) -> None:
        self.host = host
        self.backwards = 0  # backward passes started in this step
        self.armed = False  # the step's last backward runs: its gradients are masked
        self._task: int | None = None
        self._counted = False  # a backward was seen at the model's outputs in this step
        self._hooks: list[RemovableHandle] = [root.register_forward_hook(self._on_output)]
        self._tensor_hooks: dict[int, tuple[torch.Tensor, RemovableHandle]] = {}
        if host.config.mask_timing == "in_backward" and host.config.mask_mode in ("grad", "update"):
            modules: dict[int, tuple[nn.Module, list[tuple[int, Target]]]] = {}
            for i, source in enumerate(host.sources):
                for target in source.targets:
                    modules.setdefault(id(target.module), (target.module, []))[1].append((i, target))
            for module, entries in modules.values():
                self._watch(entries)  # the weights as attached (plain models, DeepSpeed)
                # and the weights a forward really uses (FSDP2's unsharded copies)
                self._hooks.append(module.register_forward_hook(partial(self._on_layer, entries)))

    # -- noticing a backward ---------------------------------------------------------------------
    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled() and self.host.decides_in_backward():
            for tensor in _tensors(output):
                if tensor.requires_grad:
                    tensor.register_hook(lambda grad: self.started(at_output=True))

    def started(self, at_output: bool = False) -> None:
        """Called as gradients flow; the first call of a backward pass counts it, and the last
        backward of the step has the handle choose the rows. Gradient hooks elsewhere call it too,
        for a loss that bypasses the model's outputs; a backward nested in another (reentrant
        gradient checkpointing) counts only if it reaches the outputs."""
        task = current_backward()
        if task is None or task == self._task or not self.host.active or (self._counted and not at_output):
            return
        self._task = task
        self._counted = self._counted or at_output
        self.backwards += 1
        config = self.host.config
        if config.mask_timing == "in_backward":
            last = config.micro_batches_per_step
            if last is None:
                raise RuntimeError(
                    "MIGU mask_timing='in_backward' must know which backward is a step's last: set "
                    "micro_batches_per_step (handle.set_micro_batches_per_step(n), n = gradient accumulation steps)"
                )
            if self.backwards > last:
                raise RuntimeError(
                    f"MIGU saw backward pass {self.backwards} in one optimizer step but micro_batches_per_step is "
                    f"{last}: set it to the real number of micro-batches per step"
                )
            if self.backwards < last:
                return
            self.armed = config.mask_mode in ("grad", "update")
        if self.host.decides_in_backward():
            self.host.decide()

    def check_armed(self) -> None:
        """Before the step (in-backward timing): the step's last backward has masked its gradients."""
        if not self.armed:
            raise RuntimeError(
                f"MIGU mask_timing='in_backward' saw {self.backwards} backward pass(es) in this optimizer step, "
                f"fewer than micro_batches_per_step={self.host.config.micro_batches_per_step}: no gradient was "
                "masked. Set micro_batches_per_step to the real number of micro-batches per step"
            )

    def reset(self) -> None:
        """A new optimizer step."""
        self.backwards = 0
        self.armed = self._counted = False
        self._task = None

    # -- masking weight gradients (in_backward timing) -----------------------------------------
    def _on_layer(self, entries: list[tuple[int, Target]], module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self._watch(entries)

    def _watch(self, entries: list[tuple[int, Target]]) -> None:
        for i, target in entries:
            params = [(target.weight, False)]
            if self.host.config.mask_bias and target.bias is not None:
                params.append((target.bias, True))  # type: ignore[arg-type]
            for tensor, bias in params:
                if tensor.requires_grad and id(tensor) not in self._tensor_hooks:
                    hook = tensor.register_hook(partial(self._mask, i, target, bias))
                    self._tensor_hooks[id(tensor)] = (tensor, hook)

    def _mask(self, index: int, target: Target, bias: bool, grad: torch.Tensor) -> torch.Tensor | None:
        self.started()
        if not self.armed or not self.host.active:
            return None
        keep = self.host.decide()[index]
        if keep is None:
            return None
        return grad * (keep if bias else shaped(target, keep)).to(grad.dtype)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for _, hook in self._tensor_hooks.values():
            hook.remove()
        self._hooks.clear()
        self._tensor_hooks.clear()


class AccumulatedMasking:
    """Masks ``.grad`` during a backward, right after it is accumulated (one process only)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.when: Callable[[], bool] | None = None
        self.armed = False  # for the next backward only
        self._hooks: list[RemovableHandle] = []
        self._lock = threading.Lock()  # autograd runs the hooks of each device on its own thread

    def install(self) -> bool:
        """Hook every masked weight (and bias) once; False, changing nothing, under torch.distributed."""
        if distributed_world() > 1:
            return False
        if not self._hooks:
            entries: dict[int, tuple[torch.Tensor, list[tuple[int, Target, bool]]]] = {}
            for i, source in enumerate(self.host.sources):
                for target in source.targets:
                    params: list[tuple[torch.Tensor | None, bool]] = [(target.weight, False)]
                    if self.host.config.mask_bias:
                        params.append((target.bias, True))
                    for tensor, bias in params:
                        if tensor is not None and tensor.requires_grad:
                            entries.setdefault(id(tensor), (tensor, []))[1].append((i, target, bias))
            for tensor, pairs in entries.values():
                hook = tensor.register_post_accumulate_grad_hook(partial(self._accumulated, pairs))
                self._hooks.append(hook)
        return True

    def _accumulated(self, entries: list[tuple[int, Target, bool]], param: torch.Tensor) -> None:
        if not self.host.active:
            return
        if not (self.armed or (self.when is not None and self.when())):
            self.host.mark_stale(param, entries)
            return
        with self._lock:
            keeps = self.host.decide(strict=True)
            for i, target, bias in entries:
                keep = keeps[i]
                if keep is not None:
                    self.host.mask_grad(target, bias, keep if bias else shaped(target, keep), in_backward=True)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
