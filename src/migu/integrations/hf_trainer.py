"""MIGU in the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[MiguCallback(threshold=0.7)])``.

The Trainer calls ``on_pre_optimizer_step`` once per gradient-accumulation boundary, after
gradient clipping and just before ``optimizer.step()``: that is where MIGU masks, with the
statistic of every micro-batch of the step. No trainer is forked and nothing is patched.
With one micro-batch per step the fast path masks during backward, i.e. before clipping (the
official order); with gradient accumulation and ``max_grad_norm`` set, the Trainer clips the
dense gradient first and the mask follows (the Trainer has no event between the last backward
and clipping).
"""

from __future__ import annotations

import warnings
from typing import Any

from transformers import TrainerCallback

from ..core import MiguConfig, MiguHandle, attach


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

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.handle is None:
            if model is None:
                raise ValueError("MiguCallback needs the Trainer's model at on_train_begin")
            self.handle = attach(model, self._config, **self._overrides)
            if self.handle.config.micro_batches_per_step is None:
                # one forward/backward per optimizer step lets MIGU skip the masked rows' gradient work
                self.handle.set_micro_batches_per_step(args.gradient_accumulation_steps)
        if getattr(args, "max_grad_norm", 0) and not self.handle.fast_path_layers:
            warnings.warn(
                "MIGU on the reference path in the Trainer masks after the Trainer's gradient clipping "
                f"(max_grad_norm={args.max_grad_norm}): the clip sees the dense gradient, unlike the official "
                "order and the fast path (mask, then clip). Set max_grad_norm=0 to avoid the difference",
                stacklevel=2,
            )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is not None:
            self.handle.before_optimizer_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.handle is not None:
            self.handle.after_optimizer_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._owned and self.handle is not None:
            self.handle.remove()
            self.handle = None
