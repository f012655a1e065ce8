"""Row selection: which output channels keep their gradient, from a layer's statistic.

Pure functions on fp32 tensors of shape [layers, rows] (layers of equal width are stacked so
that one kernel ranks them all). No host synchronisation.
"""

from __future__ import annotations

import math

import torch


def cut_index(rows: int, threshold: float) -> int:
    """Index, in ascending order, of the smallest kept value: ceil(T * (rows - 1)).

    Keeping values >= sorted[cut_index] is keeping values at or above the T-quantile under
    linear interpolation (``torch.quantile``'s default), without its rounding error. A tiny
    tolerance absorbs binary fractions such as 0.7 * 10 = 7.000000000000001.
    """
    return min(rows - 1, max(0, math.ceil(threshold * (rows - 1) - 1e-9)))


def rankable(stats: torch.Tensor) -> torch.Tensor:
    """The statistic with NaN (an overflowed forward) as -inf: such a row ranks last, never first."""
    return torch.where(stats.isnan(), float("-inf"), stats)


def magnitude_keep(stats: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean [layers, rows]: rows whose statistic is at or above the T-quantile of its layer
    (NaN ranks below every number and is never kept)."""
    cut = cut_index(stats.shape[-1], threshold)
    if cut == 0:
        return torch.ones_like(stats, dtype=torch.bool)
    floor = rankable(stats).kthvalue(cut + 1, dim=-1, keepdim=True).values
    # NaN >= anything is False: NaN rows are never kept, even when they fill the cut (floor -inf;
    # the fast path's top-k then holds NaN rows, but this mask is applied again before the step)
    return stats >= floor


def random_keep(stats: torch.Tensor, threshold: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean [layers, rows]: per layer, as many rows as ``magnitude_keep`` keeps, uniformly at random.

    ``generator`` is a CPU generator so that every rank draws the same rows.
    """
    counts = magnitude_keep(stats, threshold).sum(dim=-1, keepdim=True)
    scores = torch.rand(stats.shape, generator=generator).to(stats.device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < counts


def fast_rows(stats: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices [layers, k] of the k = rows - cut_index top rows of each layer: the rows whose weight
    gradient the fast path computes. A fixed count (no host synchronisation), so with exact ties at
    the cut it holds fewer rows than ``magnitude_keep``; the kept rows are those in both."""
    keep = stats.shape[-1] - cut_index(stats.shape[-1], threshold)
    return rankable(stats).topk(keep, dim=-1, sorted=False).indices
