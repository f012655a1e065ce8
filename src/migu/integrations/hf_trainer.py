"""MIGU in the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[MiguCallback(threshold=0.7)])``.

MIGU masks once per optimizer step, with the statistic of every micro-batch of the step, and
before the Trainer's gradient clipping (the official order: the clip sees the gradient that is
applied). The Trainer has no event between a step's last backward and its clip, so the callback
has the handle mask each gradient during that backward, as soon as it is accumulated (the
Trainer marks the last micro-batch of a step in Accelerate's ``GradientState``). What that
backward does not reach (a layer unused by the last micro-batch) is masked at
``on_pre_optimizer_step``, after the clip, as is everything with several processes (the
statistic would have to be reduced across ranks inside backward) or under gradient
checkpointing (it runs forwards inside backward); those two cases warn when clipping is on.
No trainer is forked and nothing is patched.

At each of the Trainer's logging steps the callback adds MIGU's diagnostics to the Trainer's log
entry (``on_log``): ``migu/kept_fraction``, the share of rows kept at the last step. The Trainer's
loggers (``report_to``: TensorBoard, W&B, ...) are callbacks that read each entry in list order,
before the callbacks passed to the Trainer; ``add_migu_callback(trainer, ...)`` puts the callback
ahead of them, so that they log MIGU's values as well.
"""

from __future__ import annotations

import warnings
from typing import Any

from accelerate.state import GradientState
from transformers import TrainerCallback

from ..core import MiguConfig, MiguHandle, attach
from ..core.report import kept_share
from ..core.runtime import distributed_world


class MiguCallback(TrainerCallback):
    """Attaches MIGU at ``on_train_begin`` and removes it at ``on_train_end``.

    Pass a ``MiguConfig`` or its fields as keywords, or an existing ``MiguHandle`` (which the
    caller then owns: it is neither attached nor removed here). ``handle`` is the live handle.
    """

    def __init__(self, config: MiguConfig | None = None, *, handle: MiguHandle | None = None, **overrides: Any) -> None:
        if handle is not None and (config is not None or overrides):
            raise ValueError("pass either an existing MIGU handle or a config, not both")
        self._config = config if config is not None or handle is not None else MiguConfig(**overrides)
        self._overrides = overrides if config is not None else {}
        self._owned = handle is None
        self.handle: MiguHandle | None = handle
        self._in_backward = False  # this callback asked the handle to mask during backward
        self.ahead_of_loggers = False
        """Whether ``add_migu_callback`` placed it before the Trainer's loggers."""
        self._told = False

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.handle is None:
            if model is None:
                raise ValueError("MiguCallback needs the Trainer's model at on_train_begin")
            self.handle = attach(model, self._config, **self._overrides)
            if self.handle.config.micro_batches_per_step is None:
                # one forward/backward per optimizer step lets MIGU skip the masked rows' gradient work
                self.handle.set_micro_batches_per_step(args.gradient_accumulation_steps)
        if distributed_world() > 1:
            reason = "on several processes"
        elif model is not None and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
            reason = "under gradient checkpointing"
        else:
            self._in_backward = self.handle.mask_in_backward(_last_micro_batch)
            return
        if getattr(args, "max_grad_norm", 0):
            warnings.warn(
                f"MIGU {reason} masks after the Trainer's gradient clipping (max_grad_norm={args.max_grad_norm}): "
                "the clip sees the dense gradient, unlike the official order (mask, then clip). "
                "Set max_grad_norm=0 to avoid the difference",
                stacklevel=2,
            )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is not None:
            self.handle.before_optimizer_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is not None:
            self.handle.after_optimizer_step()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.handle is None or logs is None or "loss" not in logs:  # (training log entries only)
            return
        share = None if self.handle.is_paused else kept_share(self.handle.kept_masks())
        if share is None:
            return
        logs["migu/kept_fraction"] = share
        if not self.ahead_of_loggers and getattr(args, "report_to", None) and not self._told:
            self._told = True
            warnings.warn(
                "MiguCallback adds migu/kept_fraction to the Trainer's logs, but the Trainer's loggers "
                f"({', '.join(args.report_to)}) read them before it; add it with migu.add_migu_callback(trainer, ...) "
                "to have them log it",
                stacklevel=2,
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._in_backward and self.handle is not None:
            self.handle.mask_in_backward(None)
            self._in_backward = False
        if self._owned and self.handle is not None:
            self.handle.remove()
            self.handle = None


def add_migu_callback(trainer: Any, callback: MiguCallback | None = None, **config: Any) -> MiguCallback:
    """Add ``callback`` (or ``MiguCallback(**config)``) to ``trainer`` ahead of its loggers
    (``report_to``), so that they log MIGU's diagnostics; returns the callback. The same as
    ``callbacks=[MiguCallback(...)]`` otherwise."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    if callback is None:
        callback = MiguCallback(**config)
    elif config:
        raise ValueError("pass either a MiguCallback or its settings, not both")
    loggers = tuple(c for c in INTEGRATION_TO_CALLBACK.values() if isinstance(c, type))
    handler = trainer.callback_handler
    first = next((i for i, c in enumerate(handler.callbacks) if isinstance(c, loggers)), len(handler.callbacks))
    handler.callbacks.insert(first, callback)
    callback.ahead_of_loggers = True
    return callback


def _last_micro_batch() -> bool:
    """Whether the Trainer's current micro-batch is the last of its optimizer step."""
    return bool(GradientState().sync_gradients)
