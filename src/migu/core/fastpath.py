"""The fast path: weight gradients computed for the kept rows only.

A forward hook hands the layer's output to ``RowSparseLinear``, which returns the same values
with its own backward: the input gradient in full, the bias gradient in full, and the weight
gradient only for the rows MIGU keeps (zeros elsewhere). At T = 0.7 that skips 70% of the
weight-gradient matmul. The rows are chosen at the first backward of the step, from the
statistic of every forward before it, so the result equals the reference path (dense gradient,
then mask) whenever all of a step's forwards come before its backward: one micro-batch per
optimizer step, any number of forwards in it. The handle falls back to the reference path
otherwise (gradient accumulation, distributed statistic, random selection, LoRA layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

CHUNK_VALUES = 1 << 19
MIN_CHUNK_ROWS = 256


class RowSparseLinear(torch.autograd.Function):
    """y = x W^T + b (or x W + b for Conv1D), given y; backward masks the weight gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        y: torch.Tensor,
        rows_last: bool,
        kept_rows: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.rows_last = rows_last
        ctx.kept_rows = kept_rows
        ctx.has_bias = bias is not None
        ctx.compute_dtype = y.dtype
        # a fresh tensor on y's storage, not a view of an input: the model may modify it in
        # place (an inplace ReLU), which autograd forbids on views returned by a Function
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype  # under autocast the layer ran in bf16: so do its gradients
        w = weight.to(dtype)
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ (w.t() if ctx.rows_last else w)).reshape(*grad.shape[:-1], -1).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xs = x.reshape(-1, x.shape[-1]).to(dtype)
            grad_w = torch.zeros_like(weight)
            # the kept rows in chunks, so that the gathered gradient columns and their product
            # stay small temporaries (peak memory as plain finetuning); but not thinner than
            # MIN_CHUNK_ROWS rows, below which the matmuls lose their efficiency on long batches
            step = max(MIN_CHUNK_ROWS, CHUNK_VALUES // g.shape[0])
            for rows in ctx.kept_rows().split(step):
                # gather with an expanded index: several times faster than index_select along
                # dim 1, most of all in bf16 (index_select there costs as much as the matmul)
                kept = torch.gather(g, 1, rows.expand(g.shape[0], -1))
                if ctx.rows_last:  # Conv1D: weight [in, out], output channels are columns
                    grad_w.index_copy_(1, rows, (xs.t() @ kept).to(weight.dtype))
                else:
                    grad_w.index_copy_(0, rows, (kept.t() @ xs).to(weight.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None
