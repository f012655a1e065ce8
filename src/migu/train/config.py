"""Training settings of a run (per task: a fresh AdamW, a schedule, a number of epochs)."""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")


@dataclass
class TrainConfig:
    """Optimizer, batching and schedule. The paper: AdamW, constant lr 1e-4 (full finetuning)
    or 1e-3 (LoRA), batch 64, one epoch per task."""

    lr: float = 1e-4
    optim: str = "adamw_torch"
    """AdamW's implementation, by Transformers' names: ``adamw_torch`` is ``torch.optim.AdamW``
    as torch defaults it (on a CPU a loop over the parameters; every committed result used it);
    ``adamw_torch_fused`` updates all parameters in one kernel, the same update up to rounding
    and several times faster on a CPU (``make_optimizer``; Transformers' default on torch >= 2.8)."""
    schedule: str = "constant"
    """``constant``, ``linear`` or ``cosine`` decay over each task's steps."""
    warmup_ratio: float = 0.0
    batch_size: int = 64
    """Examples per optimizer step (the statistic of MIGU covers all of them)."""
    micro_batch_size: int = 16
    """Examples per forward; ``batch_size`` must be a multiple (gradient accumulation)."""
    epochs: int = 1
    max_length: int = 128
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    eval_batch_size: int = 64
    mixed_precision: str = "no"
    """``no`` or ``bf16`` (autocast)."""
    dropout: float | None = None
    """Override every dropout probability of the model (``nn.Dropout`` modules and attention
    dropout); ``None`` keeps the model's own. 0 makes a run on N processes train exactly as on
    one (dropout masks are drawn per process, so they differ otherwise)."""

    def __post_init__(self) -> None:
        for name in ("lr", "warmup_ratio", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
                try:
                    setattr(self, name, float(value))
                except ValueError:
                    raise ValueError(f"train.{name} must be a number, got {value!r}") from None
        if self.dropout is not None and not 0 <= float(self.dropout) < 1:
            raise ValueError(f"train.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"train.optim must be one of {', '.join(OPTIMIZERS)}; got {self.optim!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"schedule must be constant, linear or cosine; got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("batch_size", "micro_batch_size", "epochs", "max_length", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.mixed_precision is False:  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size
