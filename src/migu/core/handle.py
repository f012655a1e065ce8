"""The MIGU handle: attach to a model, mask before each optimizer step, report, remove."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import MiguConfig
from .selection import magnitude_keep, random_keep
from .statistics import Recorder, distributed_world
from .targets import Source, Target, fast_path_layer, find_sources


@dataclass
class LayerReport:
    """What MIGU kept in one layer (one statistic source) over the steps it masked."""

    name: str
    targets: list[str]
    rows: int
    steps: int
    kept_fraction: float | None
    """Fraction of rows kept at the last masked step."""
    kept_rows: torch.Tensor | None
    """Indices of the rows kept at the last masked step (CPU, int64)."""
    ever_kept_fraction: float | None
    """Fraction of rows kept at least once since the handle was made or ``reset_report``."""
    mean_jaccard: float | None
    """Mean Jaccard similarity of the kept rows of consecutive masked steps."""


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
        self._generator = torch.Generator().manual_seed(config.seed)
        self._diagnostics: dict[str, dict[str, Any]] = {}
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

    def resume(self) -> None:
        """Record and mask again, from a fresh statistic."""
        self._paused = False
        self._live().reset()
        self._live().enabled = True

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
        keeps = self._select(recorder.gather(self.config.sync_distributed), recorder.forwards)
        for i, target in with_grad:
            keep = keeps[i]
            assert keep is not None  # every source with a gradient was recorded (checked above)
            self._mask(target, keep)

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
        self._masked = False
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
            self._track(indices, keep)
            for row, i in enumerate(indices):
                keeps[i] = keep[row]
        return keeps

    def _mask(self, target: Target, keep: torch.Tensor) -> None:
        grad = target.weight.grad
        assert grad is not None
        shaped = keep.view(1, -1) if target.rows_last else keep.view(-1, *([1] * (grad.dim() - 1)))
        if self.config.mask_mode == "update":
            bias = target.bias.detach().clone() if self.config.mask_bias and target.bias is not None else None
            self._pending.append((target, shaped, target.weight.detach().clone(), bias))
        if self.config.measure_update_leak:
            self._leak_pending.append((target, shaped, target.weight.detach().clone()))
        # multiply by 1 or 0, as the official code. On the fast path the layer's own gradient has
        # zero masked rows already, but a loss term on the weights themselves (an EWC or L2
        # penalty, O-LoRA's orthogonality) adds to every row: masking again keeps the paths equal
        # at the price of one pass over the gradient (a few percent of the saved work)
        grad.mul_(shaped.to(grad.dtype))
        if self.config.mask_bias and target.bias is not None and target.bias.grad is not None:
            target.bias.grad.mul_(keep.to(target.bias.grad.dtype))

    # -- reporting -----------------------------------------------------------------------------
    def _track(self, indices: list[int], keep: torch.Tensor) -> None:
        for row, i in enumerate(indices):
            d = self._diagnostics.setdefault(self.sources[i].name, {"steps": 0, "jaccard_sum": 0.0, "ever": None})
            current = keep[row]
            if d["ever"] is not None:  # running sums on the device: no host synchronisation
                previous = d["last"]
                union = (current | previous).sum().clamp(min=1)
                d["jaccard_sum"] = d["jaccard_sum"] + (current & previous).sum() / union
                d["ever"] = d["ever"] | current
            else:
                d["ever"] = current.clone()
            d["last"] = current
            d["steps"] += 1

    def report(self) -> dict[str, LayerReport]:
        """Per layer: rows kept at the last masked step, rows ever kept, consecutive-step overlap."""
        out = {}
        for source in self.sources:
            d = self._diagnostics.get(source.name)
            last = d["last"] if d else None
            out[source.name] = LayerReport(
                name=source.name,
                targets=[t.name for t in source.targets],
                rows=source.rows(),
                steps=d["steps"] if d else 0,
                kept_fraction=float(last.float().mean()) if last is not None else None,
                kept_rows=last.nonzero().flatten().cpu() if last is not None else None,
                ever_kept_fraction=float(d["ever"].float().mean()) if d else None,
                mean_jaccard=float(d["jaccard_sum"]) / (d["steps"] - 1) if d and d["steps"] > 1 else None,
            )
        return out

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
        self._diagnostics.clear()
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
