"""The MIGU handle: attach to a model, mask before each optimizer step, report, remove."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import MiguConfig
from .report import KeptRowsLog, LayerReport
from .selection import magnitude_keep, random_keep
from .statistics import Recorder, distributed_world
from .targets import Source, Target, fast_path_layer, find_sources


class MiguHandle:
    """MIGU attached to a model. Use ``migu.attach`` to make one.

    Each training forward adds to the statistic; ``before_optimizer_step`` ranks the rows and
    masks the gradients; ``after_optimizer_step`` restores masked rows (``update`` mode) and
    resets the statistic. ``attach_optimizer`` runs both around every ``optimizer.step()``.
    """

    def __init__(self, model: nn.Module, config: MiguConfig, optimizer: torch.optim.Optimizer | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"MIGU attaches to a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, MiguConfig):
            raise TypeError(f"config must be a MiguConfig, got {type(config).__name__}")
        self.model = model
        self.config = config
        self._paused = False
        self._masked = False
        self._pending: list[tuple[Target, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._leak_pending: list[tuple[Target, torch.Tensor, torch.Tensor]] = []
        self._leak: list[torch.Tensor] = []  # running [masked, total] squared update, on the device
        self._optimizer_hooks: list[RemovableHandle] = []
        # masking during backward (mask_in_backward): hooks, when to mask, the step's selection
        self._grad_hooks: list[RemovableHandle] = []
        self._when: Callable[[], bool] | None = None
        self._armed = False  # for the next backward only
        self._lock = threading.Lock()  # autograd runs the hooks of each device on its own thread
        self._keeps: list[torch.Tensor | None] | None = None
        self._keeps_forwards: list[int] = []
        self._done: set[tuple[int, bool]] = set()  # (id(target), bias?) masked this step
        self._stale: set[int] = set()  # id() of gradients that grew again after being masked
        self._generator = torch.Generator().manual_seed(config.seed)
        self._log = KeptRowsLog()
        self._recorder: Recorder | None = None
        self._attach()
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def _attach(self) -> None:
        self.sources: list[Source] = find_sources(self.model, self.config)
        self._recorder = Recorder(self.model, self.sources, self.config.ignore_padding)
        self._recorder.enabled = not self._paused
        self._recorder.threshold = self.config.threshold
        self._fast_eligible = {i for i, s in enumerate(self.sources) if fast_path_layer(s)}
        self._update_fast_path()

    def _update_fast_path(self) -> None:
        """Choose the layers whose weight gradient is computed for kept rows only (see config)."""
        c = self.config
        on = (
            c.fast_path
            and c.micro_batches_per_step == 1
            and c.selection == "magnitude"
            # across ranks the reference masks DDP's averaged dense gradient; the fast path would
            # average gradients already masked by each rank's own rows (or before the all-reduce)
            and distributed_world() <= 1
        )
        self._live().fast_sources = set(self._fast_eligible) if on else set()

    @property
    def fast_path_layers(self) -> list[str]:
        """Layers on the fast path now (empty when the reference path applies)."""
        return [self.sources[i].name for i in sorted(self._live().fast_sources)]

    def set_micro_batches_per_step(self, count: int | None) -> None:
        """Declare the forward/backward passes per optimizer step (1 enables the fast path)."""
        self.config = replace(self.config, micro_batches_per_step=count)
        self._update_fast_path()

    # -- state ---------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the masked weights, in module order."""
        return [t.name for s in self.sources for t in s.targets]

    @property
    def is_paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop recording and masking (e.g. for the first task); gradients pass untouched."""
        self._paused = True
        self._live().enabled = False
        self._live().reset()
        self._reset_step()

    def resume(self) -> None:
        """Record and mask again, from a fresh statistic."""
        self._paused = False
        self._live().reset()
        self._live().enabled = True
        self._reset_step()

    @contextmanager
    def paused(self) -> Iterator[MiguHandle]:
        """Pause within a ``with`` block, restoring the previous state after it."""
        was_paused = self._paused
        self.pause()
        try:
            yield self
        finally:
            if not was_paused:
                self.resume()

    def refresh(self) -> None:
        """Find the target layers again (e.g. after adding a LoRA adapter); resets the statistic."""
        self._live().remove()
        for hook in self._grad_hooks:  # the new layers get their own (see mask_in_backward)
            hook.remove()
        self._grad_hooks.clear()
        self._reset_step()
        self._attach()

    def set_token_mask(self, input: torch.Tensor | None = None, decoder: torch.Tensor | None = None) -> None:
        """Token masks ([batch, seq], nonzero = real token) used with ``ignore_padding`` until
        cleared with ``set_token_mask()``; they take precedence over masks read from model calls."""
        self._live().set_token_mask(input, decoder)

    def statistics(self) -> dict[str, torch.Tensor]:
        """The statistic accumulated so far in this step, per source (sum or mean over tokens)."""
        recorder = self._live()
        recorder.flush_tokens()
        out = {}
        for source, buffer in zip(self.sources, recorder.buffers, strict=True):
            values = buffer[:-1].clone()
            if self.config.reduction == "mean":
                values /= buffer[-1].clamp(min=1)
            out[source.name] = values
        return out

    def token_counts(self) -> dict[str, float]:
        """Tokens counted so far in this step, per source (real tokens only with ignore_padding)."""
        recorder = self._live()
        recorder.flush_tokens()
        return {s.name: float(b[-1]) for s, b in zip(self.sources, recorder.buffers, strict=True)}

    # -- the step ------------------------------------------------------------------------------
    def attach_optimizer(self, optimizer: Any) -> None:
        """Mask before and restore/reset after every ``optimizer.step()`` (hooks on the optimizer).

        Wrappers such as Accelerate's ``AcceleratedOptimizer`` are unwrapped to the torch
        optimizer, whose ``step`` runs only at gradient-accumulation boundaries.
        """
        while not _has_step_hooks(optimizer) and hasattr(optimizer, "optimizer"):
            optimizer = optimizer.optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"attach_optimizer needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._optimizer_hooks += [
            optimizer.register_step_pre_hook(lambda *_: self.before_optimizer_step()),
            optimizer.register_step_post_hook(lambda *_: self.after_optimizer_step()),
        ]

    def before_optimizer_step(self) -> None:
        """Rank the rows of every layer and mask the gradients; call once per optimizer step,
        after backward and before gradient clipping (the official order, and what the fast path
        computes), or at the latest just before ``optimizer.step()``. Idempotent per step."""
        if self._paused or self._masked:
            return
        recorder = self._live()
        with_grad = [(i, t) for i, s in enumerate(self.sources) for t in s.targets if t.weight.grad is not None]
        if not any(recorder.forwards):
            raise ValueError(
                "MIGU was asked to mask before any training forward: the statistic is empty "
                "(run the forward in train mode with gradients enabled, after attaching)"
            )
        if not with_grad:
            raise RuntimeError(
                "MIGU found no gradient on any of its layers, so masking would do nothing. Call it after "
                "backward; under DeepSpeed ZeRO-2/3 gradients do not live in .grad and cannot be masked here"
            )
        for i, target in with_grad:
            if recorder.forwards[i] == 0:
                raise ValueError(
                    f"layer {target.name} has a gradient but MIGU recorded no training forward for it "
                    "(was it run in eval mode or under torch.no_grad?)"
                )
        self._masked = True
        keeps = self._step_keeps()
        for i, target in with_grad:
            keep = keeps[i]
            assert keep is not None  # every source with a gradient was recorded (checked above)
            shaped = self._shaped(target, keep)
            if self.config.mask_mode == "update":
                bias = target.bias.detach().clone() if self.config.mask_bias and target.bias is not None else None
                self._pending.append((target, shaped, target.weight.detach().clone(), bias))
            if self.config.measure_update_leak:
                self._leak_pending.append((target, shaped, target.weight.detach().clone()))
            # multiply by 1 or 0, as the official code. On the fast path the layer's own gradient
            # has zero masked rows already, but a loss term on the weights themselves (an EWC or
            # L2 penalty, O-LoRA's orthogonality) adds to every row: masking again keeps the paths
            # equal at the price of one pass over the gradient (a few percent of the saved work)
            self._mask(target, False, shaped)
            if self.config.mask_bias and target.bias is not None:
                self._mask(target, True, keep)

    def _mask(self, target: Target, bias: bool, shaped: torch.Tensor, in_backward: bool = False) -> None:
        """Multiply the weight's (or bias's) gradient by the 0/1 mask, unless this step did."""
        param = target.bias if bias else target.weight
        grad = None if param is None else param.grad
        if grad is None or (not in_backward and (id(target), bias) in self._done and id(param) not in self._stale):
            return
        grad.mul_(shaped.to(grad.dtype))
        self._done.add((id(target), bias))

    def mask_in_next_backward(self) -> bool:
        """Mask each gradient during the next backward, as soon as it is accumulated.

        For a loop whose gradient clipping follows the last backward of a step with no room for
        ``before_optimizer_step`` in between: call this before the step's last backward (its
        forward completes the statistic). ``before_optimizer_step`` must still run: it masks what
        that backward did not reach, and again what a later backward added to. One process only,
        since the statistic would have to be reduced across ranks inside backward: returns False
        (changing nothing) under torch.distributed, while paused or once the step is masked.
        """
        if self._paused or self._masked or not self._hook_gradients():
            return False
        self._armed = True
        return True

    def mask_in_backward(self, when: Callable[[], bool] | None) -> bool:
        """Mask during every backward for which ``when()`` is true, as ``mask_in_next_backward``
        (``when`` is asked as each gradient is accumulated; it should say whether this is the last
        backward of the step). ``None`` stops. Returns False under torch.distributed."""
        self._when = None
        if when is None or not self._hook_gradients():
            return False
        self._when = when
        return True

    def _hook_gradients(self) -> bool:
        if distributed_world() > 1:
            return False
        if not self._grad_hooks:
            entries: dict[int, tuple[torch.Tensor, list[tuple[int, Target, bool]]]] = {}
            for i, source in enumerate(self.sources):
                for target in source.targets:
                    params: list[tuple[torch.Tensor, bool]] = [(target.weight, False)]
                    if self.config.mask_bias and target.bias is not None:
                        params.append((target.bias, True))
                    for tensor, bias in params:
                        if tensor.requires_grad:
                            entries.setdefault(id(tensor), (tensor, []))[1].append((i, target, bias))
            for tensor, pairs in entries.values():
                hook = tensor.register_post_accumulate_grad_hook(lambda p, pairs=pairs: self._in_backward(p, pairs))
                self._grad_hooks.append(hook)
        return True

    def _in_backward(self, param: torch.Tensor, entries: list[tuple[int, Target, bool]]) -> None:
        if self._paused or self._masked:
            return
        if not (self._armed or (self._when is not None and self._when())):
            if any((id(t), b) in self._done for _, t, b in entries):
                self._stale.add(id(param))  # masked in an earlier backward: mask again at the step
            return
        with self._lock:
            keeps = self._step_keeps()
            for i, target, bias in entries:
                keep = keeps[i]
                if keep is not None:
                    self._mask(target, bias, keep if bias else self._shaped(target, keep), in_backward=True)
            self._stale.discard(id(param))

    def _step_keeps(self) -> list[torch.Tensor | None]:
        """The step's selection, made once; a forward after it means it saw part of the statistic."""
        recorder = self._live()
        if self._keeps is None:
            self._keeps = self._select(recorder.gather(self.config.sync_distributed), recorder.forwards)
            self._keeps_forwards = list(recorder.forwards)
        elif recorder.forwards != self._keeps_forwards:
            raise RuntimeError(
                "MIGU chose this step's rows during a backward, and a training forward ran after that, so "
                "the choice missed part of the statistic: mask in backward only in the step's last backward, "
                "and not under gradient checkpointing (it runs forwards inside backward)"
            )
        return self._keeps

    def _reset_step(self) -> None:
        self._masked = self._armed = False
        self._keeps, self._keeps_forwards = None, []
        self._done.clear()
        self._stale.clear()

    def after_optimizer_step(self) -> None:
        """Restore masked rows (``update`` mode) and reset the statistic for the next step."""
        for target, shaped, weight, bias in self._pending:
            w = target.weight.detach()
            w.copy_(torch.where(shaped, w, weight))
            if bias is not None and target.bias is not None:
                b = target.bias.detach()
                b.copy_(torch.where(shaped.reshape(-1), b, bias))
        self._pending.clear()
        for target, shaped, before in self._leak_pending:
            delta = (target.weight.detach() - before).float().pow(2)
            step = torch.stack([(delta * ~shaped).sum(), delta.sum()])
            self._leak = [self._leak[0] + step] if self._leak else [step]
        self._leak_pending.clear()
        self._reset_step()
        self._live().reset()
        self._update_fast_path()

    def _select(self, buffers: list[torch.Tensor], forwards: list[int]) -> list[torch.Tensor | None]:
        groups: dict[tuple[int, torch.device], list[int]] = {}
        for i, buffer in enumerate(buffers):
            if forwards[i]:
                groups.setdefault((buffer.numel() - 1, buffer.device), []).append(i)
        keeps: list[torch.Tensor | None] = [None] * len(buffers)
        for indices in groups.values():
            stats = torch.stack([buffers[i][:-1] for i in indices])
            if self.config.selection == "random":
                keep = random_keep(stats, self.config.threshold, self._generator)
            else:
                keep = magnitude_keep(stats, self.config.threshold)
            self._log.add([self.sources[i].name for i in indices], keep)
            for row, i in enumerate(indices):
                keeps[i] = keep[row]
        return keeps

    @staticmethod
    def _shaped(target: Target, keep: torch.Tensor) -> torch.Tensor:
        """``keep`` (one flag per row) shaped to broadcast over the weight."""
        dims = target.weight.dim()
        return keep.view(1, -1) if target.rows_last else keep.view(-1, *([1] * (dims - 1)))

    # -- reporting -----------------------------------------------------------------------------
    def report(self) -> dict[str, LayerReport]:
        """Per layer: rows kept at the last masked step, rows ever kept, consecutive-step overlap."""
        return self._log.report(self.sources)

    def update_leak(self) -> float | None:
        """Share of the squared weight update that landed on masked rows, over the steps since
        the handle was made or ``reset_report`` (needs ``measure_update_leak=True``)."""
        if not self._leak:
            return None
        masked, total = self._leak[0].tolist()
        return masked / total if total > 0 else 0.0

    def reseed(self, seed: int) -> None:
        """Restart the generator of the ``random`` selection (e.g. per task, for resumable runs)."""
        self._generator.manual_seed(seed)

    def reset_report(self) -> None:
        """Forget the masking history (e.g. at the start of a new task)."""
        self._log.clear()
        self._leak.clear()

    # -- lifetime ------------------------------------------------------------------------------
    def _live(self) -> Recorder:
        if self._recorder is None:
            raise RuntimeError("this MIGU handle was removed; attach again to use MIGU")
        return self._recorder

    def remove(self) -> None:
        """Remove every hook this handle added (and no other); the model is as before attach."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        for hook in self._optimizer_hooks:
            hook.remove()
        self._optimizer_hooks.clear()
        for hook in self._grad_hooks:
            hook.remove()
        self._grad_hooks.clear()
        self._when = None
        self._pending.clear()
        self._leak_pending.clear()

    def __enter__(self) -> MiguHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _has_step_hooks(optimizer: Any) -> bool:
    return isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "_optimizer_step_pre_hooks")


def attach(
    model: nn.Module,
    config: MiguConfig | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    **overrides: Any,
) -> MiguHandle:
    """Attach MIGU to ``model``; ``overrides`` are ``MiguConfig`` fields (``threshold=0.7``, ...).

    With ``optimizer``, masking runs automatically around each ``optimizer.step()``; otherwise
    call ``handle.before_optimizer_step()`` and ``handle.after_optimizer_step()`` around it.
    """
    if config is None:
        config = MiguConfig(**overrides)
    elif overrides:
        config = replace(config, **overrides)
    return MiguHandle(model, config, optimizer=optimizer)
