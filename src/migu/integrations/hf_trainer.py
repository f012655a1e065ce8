"""MIGU in the Hugging Face ``Trainer``: ``Trainer(..., callbacks=[MiguCallback(threshold=0.7)])``.

MIGU masks once per optimizer step, with the statistic of every micro-batch of the step, and
before the Trainer's gradient clipping (the official order: the clip sees the gradient that is
applied). With one micro-batch per step the fast path masks during backward. With gradient
accumulation the Trainer has no event between the last backward and clipping, so after the
step's second-to-last micro-batch (``on_substep_end``) the callback asks the handle to mask
each weight's gradient during the last backward, as soon as it is complete. Two cases still mask
at ``on_pre_optimizer_step``, after clipping: several processes (the statistic would have to be
reduced across ranks inside backward; a warning says so) and an epoch's last step when it has
fewer micro-batches than ``gradient_accumulation_steps``. No trainer is forked and nothing is
patched.
"""

from __future__ import annotations

import warnings
from typing import Any

from transformers import TrainerCallback

from ..core import MiguConfig, MiguHandle, attach
from ..core.statistics import distributed_world


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
        self._micro_batches = 0  # of the current optimizer step, finished

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.handle is None:
            if model is None:
                raise ValueError("MiguCallback needs the Trainer's model at on_train_begin")
            self.handle = attach(model, self._config, **self._overrides)
            if self.handle.config.micro_batches_per_step is None:
                # one forward/backward per optimizer step lets MIGU skip the masked rows' gradient work
                self.handle.set_micro_batches_per_step(args.gradient_accumulation_steps)
        if getattr(args, "max_grad_norm", 0) and args.gradient_accumulation_steps > 1 and distributed_world() > 1:
            warnings.warn(
                "MIGU with gradient accumulation on several processes masks after the Trainer's gradient "
                f"clipping (max_grad_norm={args.max_grad_norm}): the clip sees the dense gradient, unlike the "
                "official order (mask, then clip). Set max_grad_norm=0 to avoid the difference",
                stacklevel=2,
            )

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._micro_batches = 0

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # called after each micro-batch but a step's last: arm before that last one
        self._micro_batches += 1
        if self.handle is not None and self._micro_batches == args.gradient_accumulation_steps - 1:
            self.handle.mask_in_next_backward()

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
