"""Masks on sharded weights: the rows of a full-layer mask that this rank owns.

FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps every weight and its gradient as a DTensor
sharded by rows (``Shard(0)``), the axis MIGU masks. The mask is chosen from the statistic summed
over ranks, so it is the same full-layer mask everywhere; each rank applies the slice of it that
lines up with its own shard. Plain tensors pass through unchanged.
"""

from __future__ import annotations

import torch

try:  # torch.distributed may be absent from a build; then nothing is ever a DTensor
    from torch.distributed.tensor import DTensor, Replicate
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (a weight or gradient under FSDP2 or tensor parallelism)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (the tensor itself when it is not sharded); writes to it
    write to the tensor."""
    return tensor.to_local() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def local_mask(like: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The part of ``mask`` (broadcastable over the full shape of ``like``) that lines up with this
    rank's shard of ``like``; ``mask`` itself when ``like`` is not sharded.

    Replicate -> the placements of ``like`` is a local slice: no communication.
    """
    if not is_sharded(like):
        return mask
    mesh, placements = like.device_mesh, like.placements  # type: ignore[attr-defined]
    full = mask.to(device=local(like).device).expand(like.shape)
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, placements).to_local()


def storage_key(tensor: torch.Tensor) -> int:
    """A key equal for two tensors on one storage (tied weights); DTensors report data_ptr 0."""
    ptr = local(tensor).data_ptr()
    return ptr if ptr else id(tensor)
