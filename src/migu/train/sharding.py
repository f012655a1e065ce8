"""FSDP2 for a run: shard the model with ``fully_shard`` across the processes of the launch.

Accelerate applies FSDP only on GPUs; on CPU (gloo) it runs an FSDP launch config as plain DDP.
migu then shards the model itself, the same way: every transformer block of the model's
``_no_split_modules`` and the root with ``fully_shard`` (weights and gradients become DTensors
sharded by rows, the axis MIGU masks; MIGU masks each rank's own rows with the statistic summed
over ranks). With a GPU and Accelerate's FSDP plugin, Accelerate shards instead.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP2 (``accelerate launch`` with an FSDP config, version 2)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and os.environ.get("FSDP_VERSION") == "2"


def migu_shards(accelerator: Any) -> bool:
    """FSDP2 requested, several processes, and Accelerate not sharding (on CPU): migu shards."""
    return fsdp_requested() and accelerator.num_processes > 1 and accelerator.distributed_type != "FSDP"


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module) -> nn.Module:
    """``fully_shard`` each block named in ``_no_split_modules`` (of the model or the model PEFT
    wraps), then the root; in place, returned for convenience. Resharding after forward follows
    ``FSDP_RESHARD_AFTER_FORWARD`` (default true)."""
    from torch.distributed.fsdp import fully_shard

    if is_sharded(model):
        return model
    get_base = getattr(model, "get_base_model", None)  # PEFT
    base = get_base() if callable(get_base) else model
    blocks = set(getattr(base, "_no_split_modules", None) or ())
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def check_all_sharded(model: nn.Module, what: str) -> None:
    """Under FSDP every trainable parameter must be sharded: one added after sharding (a new
    adapter per task) would get no gradient reduction and the ranks would drift apart."""
    from torch.distributed.tensor import DTensor

    loose = [n for n, p in model.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if loose:
        raise ValueError(f"{what} adds trainable parameters after the model was sharded ({loose[0]}, ...): under "
                         "FSDP use methods that set up all their parameters before the first task (finetune, "
                         "lora, replay, ewc, derpp, migu)")  # fmt: skip
