"""Training settings of a run (per task: a fresh AdamW, a schedule, a number of epochs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..settings import check_fields, check_number

Optimizer = Literal["adamw_torch", "adamw_torch_fused"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)


@dataclass
class TrainConfig:
    """Optimizer, batching and schedule. The official MIGU scripts: AdamW, constant lr 1e-4 for
    full finetuning and LoRA alike, batch 8, one epoch per task (``configs/protocols/paper.yaml``)."""

    lr: float = 1e-4
    """AdamW's peak learning rate, the same for every task."""
    optim: Optimizer = "adamw_torch"
    """AdamW's implementation, by Transformers' names: ``adamw_torch`` is ``torch.optim.AdamW``
    as torch defaults it (on a CPU a loop over the parameters; every committed result used it);
    ``adamw_torch_fused`` updates all parameters in one kernel, the same update up to rounding
    and several times faster on a CPU (``make_optimizer``; Transformers' default on torch >= 2.8)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """``constant``, ``linear`` or ``cosine`` decay over each task's steps."""
    warmup_ratio: float = 0.0
    """Share of each task's steps over which the rate warms up linearly from 0, under the ``linear``
    and ``cosine`` schedules (Transformers' ``constant`` schedule ignores it)."""
    batch_size: int = 64
    """Examples per optimizer step (the statistic of MIGU covers all of them)."""
    micro_batch_size: int = 16
    """Examples per forward; ``batch_size`` must be a multiple (gradient accumulation)."""
    epochs: int = 1
    """Passes over each task's training examples."""
    max_length: int = 128
    """Tokens per input at most (longer inputs are cut); also the row length of corpus tasks."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this before each step (after MIGU's mask); 0 or null:
    no clipping."""
    eval_batch_size: int = 64
    """Examples per forward when evaluating."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """``no`` or ``bf16`` (autocast)."""
    dropout: float | None = None
    """Override every dropout probability of the model (``nn.Dropout`` modules and attention
    dropout); ``None`` keeps the model's own. 0 makes a run on N processes train exactly as on
    one (dropout masks are drawn per process, so they differ otherwise)."""

    def __post_init__(self) -> None:
        check_fields(self, "train")  # (the Literal and number fields)
        check_number(self.lr, "train.lr", 0, low_open=True)
        check_number(self.weight_decay, "train.weight_decay", 0)
        check_number(self.max_grad_norm, "train.max_grad_norm", 0)  # (0 or null: no clipping)
        check_number(self.warmup_ratio, "train.warmup_ratio", 0, 0.999999)
        if self.dropout is not None:
            check_number(self.dropout, "train.dropout", 0, 0.999999)
        for name in ("batch_size", "micro_batch_size", "epochs", "max_length", "eval_batch_size"):
            check_number(getattr(self, name), f"train.{name}", 1)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size
