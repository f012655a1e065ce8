"""Where the code runs: the torch.distributed world, and the backward pass in progress."""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> int:
    """Number of ranks when torch.distributed is initialized, else 1 (nothing called)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def current_backward() -> int | None:
    """Id of the backward pass autograd is running on this thread, or None outside backward."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    task = current() if current is not None else -1
    return None if task == -1 else int(task)


def in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed block recomputing its forward)."""
    return current_backward() is not None
