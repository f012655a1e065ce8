"""The MIGU handle: attach to a model, mask before each optimizer step, report, remove."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .backward import AccumulatedMasking, BackwardStart
from .config import MiguConfig
from .fastpath import FastPath, KernelChoice
from .gradmask import GradMasks
from .profiling import HOOKS, MASK, RESTORE, scope, scoped_call
from .report import LayerReport
from .statistics import Recorder
from .step import StepSelection, step_gradients
from .targets import Source, Target, find_sources, shaped
from .updates import UpdateKeeper


class MiguHandle:
    """MIGU attached to a model. Use ``migu.attach`` to make one.

    Each training forward adds to the statistic; ``before_optimizer_step`` ranks the rows and
    masks the gradients; ``after_optimizer_step`` restores masked rows (``update`` mode) and
    resets the statistic. ``attach_optimizer`` runs both around every ``optimizer.step()``.
    Under FSDP2 (weights sharded by rows as DTensors) each rank masks the rows it owns.
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
        self._updates = UpdateKeeper(config.mask_mode == "update", config.measure_update_leak, config.mask_bias)
        self._optimizer_hooks: list[RemovableHandle] = []
        self._grads = GradMasks()
        self._step = StepSelection(config)
        self._recorder: Recorder | None = None
        self._start: BackwardStart | None = None
        self._accumulated = AccumulatedMasking(self)
        self._kernels = KernelChoice(config.fast_path_kernel)  # kept across refresh()
        self._attach()
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def _attach(self) -> None:
        self.sources: list[Source] = find_sources(self.model, self.config)
        self._fast = FastPath(self.sources, self._kernels, self._choose_fast_rows)
        self._recorder = Recorder(self.model, self.sources, self.config.ignore_padding, self._fast)
        self._recorder.enabled = not self._paused
        self._start = BackwardStart(self, self.model)
        self._fast.choose(self.config)

    @property
    def fast_path_layers(self) -> list[str]:
        """Layers on the fast path now (empty when the reference path applies; see config)."""
        self._live()
        return [self.sources[i].name for i in sorted(self._fast.on)]

    def fast_path_kernels(self) -> dict[str, str]:
        """The kernel the fast path uses per layer shape so far (``fast_path_kernel``; with
        ``auto``, the shapes timed so far), keyed by a readable description of the shape."""
        return self._kernels.describe()

    def set_micro_batches_per_step(self, count: int | None) -> None:
        """Declare the forward/backward passes per optimizer step (1 enables the fast path)."""
        self.config = replace(self.config, micro_batches_per_step=count)
        self._step.config = self.config
        self._fast.choose(self.config)

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
        if self._start is not None:
            self._start.remove()
        self._accumulated.remove()  # the new layers get their own (see mask_in_backward)
        self._reset_step()
        self._attach()

    def set_token_mask(self, input: torch.Tensor | None = None, decoder: torch.Tensor | None = None) -> None:
        """Token masks ([batch, seq], nonzero = real token) used with ``ignore_padding`` until
        cleared with ``set_token_mask()``; they take precedence over masks read from model calls."""
        self._live().set_token_mask(input, decoder)

    def statistics(self) -> dict[str, torch.Tensor]:
        """The statistic accumulated so far in this step, per source (sum or mean over tokens)."""
        return self._live().statistics(self.config.reduction == "mean")

    def token_counts(self) -> dict[str, float]:
        """Tokens counted so far in this step, per source (real tokens only with ignore_padding)."""
        return self._live().token_counts()

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
            optimizer.register_step_pre_hook(lambda *_: scoped_call(HOOKS, self.before_optimizer_step)),
            optimizer.register_step_post_hook(lambda *_: scoped_call(HOOKS, self.after_optimizer_step)),
        ]

    def before_optimizer_step(self) -> None:
        """Rank the rows of every layer and mask the gradients; call once per optimizer step,
        after backward and before gradient clipping (the official order, and what the fast path
        computes), or at the latest just before ``optimizer.step()``. Idempotent per step.
        With ``mask_timing="in_backward"`` the gradients were masked during the last backward:
        this only prepares ``update`` mode; in ``observe`` mode it only records the selection."""
        if self._paused or self._masked:
            return
        recorder = self._live()
        if not any(recorder.forwards):
            raise ValueError(
                "MIGU was asked to mask before any training forward: the statistic is empty "
                "(run the forward in train mode with gradients enabled, after attaching)"
            )
        c = self.config
        if c.mask_mode == "observe":
            self.decide()
            self._masked = True
            return
        if c.mask_timing == "in_backward":
            self._prepare_in_backward_step()
            return
        with_grad = step_gradients(recorder, self.sources)
        keeps = self.decide()
        self._masked = True
        with scope(MASK):
            self._mask_step(with_grad, keeps)

    def _mask_step(self, with_grad: list[tuple[int, Target]], keeps: list[torch.Tensor | None]) -> None:
        c = self.config
        for i, target in with_grad:
            keep = keeps[i]
            assert keep is not None  # every source with a gradient was recorded (checked above)
            mask = shaped(target, keep)
            with scope(RESTORE):
                self._updates.save(target, mask)
            # multiply by 1 or 0, as the official code. On the fast path the layer's own gradient
            # has zero masked rows already, but a loss term on the weights themselves (an EWC or
            # L2 penalty, O-LoRA's orthogonality) adds to every row: masking again keeps the paths
            # equal at the price of one pass over the gradient (a few percent of the saved work)
            self.mask_grad(target, False, mask)
            if c.mask_bias and target.bias is not None:
                self.mask_grad(target, True, keep)

    def _prepare_in_backward_step(self) -> None:  # the gradients were masked in the last backward
        assert self._start is not None
        self._start.check_armed()
        keeps = self.decide()
        self._masked = True
        self._updates.save_selected(self.sources, keeps)

    def mask_grad(self, target: Target, bias: bool, shaped: torch.Tensor, in_backward: bool = False) -> None:
        """Multiply the weight's (or bias's) gradient by the 0/1 mask, unless this step did."""
        self._grads.apply(target, bias, shaped, in_backward)

    def mark_stale(self, param: torch.Tensor, entries: list[tuple[int, Target, bool]]) -> None:
        """A backward added to a gradient masked in an earlier one: mask it again at the step."""
        self._grads.mark_stale(param, entries)

    def mask_in_next_backward(self) -> bool:
        """Mask each gradient during the next backward, as soon as it is accumulated: for a loop
        that clips right after the step's last backward; call it before that backward (its forward
        completes the statistic). ``before_optimizer_step`` must still run: it masks what that
        backward did not reach, and again what a later backward added to. One process: returns
        False (changing nothing) under torch.distributed, while paused or once the step is masked.
        (Engines that keep no ``.grad``, or several processes: ``mask_timing="in_backward"``.)"""
        if self._paused or self._masked or not self._accumulated.install():
            return False
        self._accumulated.armed = True
        return True

    def mask_in_backward(self, when: Callable[[], bool] | None) -> bool:
        """Mask during every backward for which ``when()`` is true, as ``mask_in_next_backward``
        (``when`` is asked as each gradient is accumulated; it should say whether this is the last
        backward of the step). ``None`` stops. Returns False under torch.distributed."""
        self._accumulated.when = None
        if when is None or not self._accumulated.install():
            return False
        self._accumulated.when = when
        return True

    # -- the step's selection ------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Recording and not yet masked in this step."""
        return not self._paused and not self._masked and self._recorder is not None

    def decides_in_backward(self) -> bool:
        """Whether the rows are chosen when the step's (last) backward starts (fast path, in_backward)."""
        if not self.active or self.config.mask_mode == "observe":
            return False
        return self.config.mask_timing == "in_backward" or bool(self._fast.on and not self._fast.world_changed())

    def decide(self, strict: bool = False) -> list[torch.Tensor | None]:
        """The step's selection, made once (see ``StepSelection.decide``)."""
        return self._step.decide(self._live(), self.sources, self._fast.on, strict)

    def _choose_fast_rows(self, index: int) -> torch.Tensor | None:
        """The rows whose weight gradient a fast-path backward computes; None: the dense gradient
        (paused, the statistic reset since the forward, or not the step's last backward)."""
        start = self._start
        if not self.active or not self._live().forwards[index]:
            return None
        if self.config.mask_timing == "in_backward" and not (start and start.armed):
            return None
        self.decide()
        return self._step.fast_rows.get(index)

    def _reset_step(self) -> None:
        self._masked = False
        self._accumulated.armed = False
        self._step.reset()
        self._grads.clear()
        if self._start is not None:
            self._start.reset()

    def after_optimizer_step(self) -> None:
        """Restore masked rows (``update`` mode) and reset the statistic for the next step."""
        with scope(RESTORE):
            self._updates.after_step()
        self._reset_step()
        self._live().reset()
        self._fast.choose(self.config)

    # -- reporting -----------------------------------------------------------------------------
    def report(self) -> dict[str, LayerReport]:
        """Per layer: rows kept at the last masked step, rows ever kept, consecutive-step overlap."""
        return self._step.log.report(self.sources)

    def kept_masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (statistic source, as in ``report``) that had a selection since the handle was
        made or ``reset_report``: boolean CPU tensors over its rows, ``(kept at the last step, ever
        kept)``. In every mode, ``observe`` included; on the fast path the rows that got a gradient."""
        return self._step.log.masks()

    def update_leak(self) -> float | None:
        """Share of the squared weight update that landed on masked rows, over the steps since
        the handle was made or ``reset_report`` (needs ``measure_update_leak=True``; under FSDP2,
        over this rank's rows)."""
        return self._updates.leak()

    def set_row_scores(self, scores: dict[str, torch.Tensor]) -> None:
        """Row scores for ``selection="given"``, by layer (the statistic sources' names, as in
        ``report``): one value per row, higher kept first; they stay until set again."""
        self._step.set_given(self.sources, scores)

    def row_scores(self) -> dict[str, torch.Tensor]:
        """The scores set with ``set_row_scores`` (empty if none)."""
        return dict(self._step.given)

    def reseed(self, seed: int) -> None:
        """Restart the generator of the ``random`` selection (e.g. per task, for resumable runs)."""
        self._step.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """What carries over from step to step (the ``random`` selection's generator, the kept-rows
        record behind ``report``, the update leak), so that a run saved between two steps and
        loaded into a handle on the same model continues exactly (``load_state_dict``)."""
        return {"selection": self._step.state_dict(), "updates": self._updates.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next((t.weight.device for s in self.sources for t in s.targets), torch.device("cpu"))
        self._step.load_state_dict(state["selection"], device)
        self._updates.load_state_dict(state["updates"], device)

    def reset_report(self) -> None:
        """Forget the masking history (e.g. at the start of a new task)."""
        self._step.log.clear()
        self._updates.clear_leak()

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
        if self._start is not None:
            self._start.remove()
            self._start = None
        self._accumulated.remove()
        self._accumulated.when = None
        self._updates.drop()

    def __enter__(self) -> MiguHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _has_step_hooks(optimizer: Any) -> bool:
    return isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "_optimizer_step_pre_hooks")
