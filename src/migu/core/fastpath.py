"""The fast path: weight gradients computed for the kept rows only.

A forward hook hands the layer's output to ``RowSparseLinear``, which returns the same values
with its own backward: the input gradient in full, the bias gradient in full, and the weight
gradient only for the rows MIGU keeps (zeros elsewhere). At T = 0.7 that skips 70% of the
weight-gradient matmul. The rows are chosen at the first backward of the step, from the
statistic of every forward before it, so the result equals the reference path (dense gradient,
then mask) whenever all of a step's forwards come before its backward: one micro-batch per
optimizer step, any number of forwards in it. The handle falls back to the reference path
otherwise (gradient accumulation, distributed statistic, random selection, LoRA layers).

How the kept rows' gradient is computed is a kernel choice (``MiguConfig.fast_path_kernel``):
``gather`` or ``index_select`` (copy the kept columns of the output gradient, then a matmul of
the kept rows only) or ``dense`` (the full matmul, then the dropped rows zeroed). Which copy is
faster depends on the CPU, the dtype and the layer's shape (measured: ``index_select`` is 4x
faster than ``gather`` in fp32 on an AVX2 EPYC and 3x slower in bf16), so on a CPU ``auto``
times the two on the real tensors at the first backward of each (shape, dtypes, kept rows,
tokens rounded up to a power of two) and uses the faster from then on, as cuDNN's benchmark
mode does for convolutions. Both hand the same tensor to the same matmul, so the choice never
changes a bit of the result. ``dense`` is not timed: a product of all rows is not bit-equal to
one of some rows in general (MKL with several threads splits the two differently; with one
thread they agreed in every case tried, except products of 1-3 rows, which never occur here:
fewer kept rows go dense on every kernel, and chunks are split evenly with at least MIN_ROWS).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from .config import MiguConfig
from .profiling import FAST_GRAD, scope
from .runtime import distributed_world, in_backward
from .sharding import is_sharded
from .targets import Source, fast_path_layer

CHUNK_VALUES = 1 << 19
MIN_CHUNK_ROWS = 256
MIN_ROWS = 4  # fewest rows in one product (module docstring)
KERNELS = ("gather", "index_select", "dense")
TIMED = ("gather", "index_select")  # what auto chooses from: the same bits (module docstring)
UNTIMED = "gather"  # what auto uses where it does not time (not a CPU)


class FastPath:
    """Which layers are on the fast path now, and the backward each of their outputs gets.

    ``choose_rows(index)`` (the handle's) gives the rows a layer's backward computes, or None
    for the dense gradient (paused, the statistic reset since the forward, not the step's last
    backward under in-backward timing)."""

    def __init__(
        self, sources: list[Source], kernels: KernelChoice, choose_rows: Callable[[int], torch.Tensor | None]
    ) -> None:
        self.sources = sources
        self.kernels = kernels
        self.choose_rows = choose_rows
        self.eligible = {i for i, s in enumerate(sources) if fast_path_layer(s)}
        self.on: set[int] = set()  # the sources on the fast path now
        self.world = 1  # ranks when they were chosen

    def choose(self, config: MiguConfig) -> None:
        """Put the eligible layers on the fast path when ``config`` allows it in this world."""
        world = distributed_world()
        # the rows come from the statistic all-reduced when the backward starts. Under DDP the
        # step-timed path stays the reference (DDP's averaged dense gradient, then the mask)
        sharded = world > 1 and any(is_sharded(t.weight) for s in self.sources for t in s.targets)
        on = (
            config.fast_path
            and config.selection == "magnitude"
            and config.mask_mode != "observe"
            and (
                config.mask_timing == "in_backward" or (config.micro_batches_per_step == 1 and (world <= 1 or sharded))
            )
        )
        self.on = set(self.eligible) if on else set()
        self.world = world

    def world_changed(self) -> bool:
        """A process group appeared (or went) since the fast path was chosen."""
        return distributed_world() != self.world

    def output(self, index: int, x: torch.Tensor, output: torch.Tensor, decided: bool) -> torch.Tensor:
        """The layer's training ``output`` (input ``x``) with the fast path's backward."""
        if decided and not in_backward():  # a recompute (gradient checkpointing) is fine
            raise RuntimeError(
                "MIGU's fast path saw a training forward after a backward in the same optimizer step "
                "(gradient accumulation?): the rows kept by the first backward would ignore it. "
                "Set micro_batches_per_step to the real number (or fast_path=False)"
            )
        target = self.sources[index].targets[0]  # read now: under FSDP2 the unsharded weight
        kept = partial(self.kept_rows, index)
        return RowSparseLinear.apply(x, target.weight, target.bias, output.detach(), target.rows_last, kept,
                                     self.kernels)  # fmt: skip

    def kept_rows(self, index: int) -> torch.Tensor:
        """The rows whose weight gradient a backward computes; every row where none are chosen (a
        process group appeared after attaching: the rows must come from the reduced statistic)."""
        rows = None if self.world_changed() else self.choose_rows(index)
        if rows is not None:
            return rows
        target = self.sources[index].targets[0]
        return torch.arange(target.rows(), device=target.weight.device)


class KernelChoice:
    """The fast path's kernel per layer shape: fixed, or timed once per shape (``auto``)."""

    def __init__(self, kernel: str = "auto", trials: int = 2) -> None:
        if kernel != "auto" and kernel not in KERNELS:
            raise ValueError(f"fast_path_kernel must be auto or one of {', '.join(KERNELS)}; got {kernel!r}")
        self.kernel = kernel
        self.trials = trials
        self.chosen: dict[tuple, str] = {}  # shape key -> kernel
        self.timings: dict[tuple, dict[str, float]] = {}  # shape key -> kernel -> best seconds
        self._lock = threading.Lock()  # autograd runs each device's backward on its own thread

    @staticmethod
    def key(g: torch.Tensor, xs: torch.Tensor, kept: int, rows_last: bool, dtype: torch.dtype) -> tuple:
        tokens = 1 << max(0, int(g.shape[0] - 1).bit_length())
        return (str(g.device), g.dtype, dtype, rows_last, tokens, xs.shape[1], g.shape[1], kept)

    def weight_grad(
        self, g: torch.Tensor, xs: torch.Tensor, rows: torch.Tensor, rows_last: bool, dtype: torch.dtype
    ) -> torch.Tensor:
        """The weight gradient ([out, in], or [in, out] for Conv1D) in ``dtype``, computed in
        ``g``'s, with zeros outside ``rows``."""
        args = (g, xs, rows, rows_last, dtype)
        if rows.numel() == g.shape[1]:
            return _all_rows(g, xs, rows_last, dtype)
        if rows.numel() < MIN_ROWS:
            return _dense(*args)
        if self.kernel != "auto":
            return KERNEL_FUNCTIONS[self.kernel](*args)
        if g.device.type != "cpu":
            return KERNEL_FUNCTIONS[UNTIMED](*args)
        key = self.key(g, xs, rows.numel(), rows_last, dtype)
        kernel = self.chosen.get(key)
        if kernel is None:
            kernel = self._calibrate(key, args)
        return KERNEL_FUNCTIONS[kernel](*args)

    def describe(self) -> dict[str, str]:
        """``{"<device> <dtype> <tokens> x <in> -> <out>, <kept> kept": kernel}`` of the shapes seen."""
        out = {}
        for (device, dtype, _, rows_last, tokens, width_in, width_out, kept), kernel in list(self.chosen.items()):
            name = f"{device} {str(dtype).removeprefix('torch.')} {tokens} x {width_in} -> {width_out}, {kept} kept"
            out[name + (" (Conv1D)" if rows_last else "")] = kernel
        return out

    def _calibrate(self, key: tuple, args: tuple) -> str:
        """Time the kernels of TIMED on the real tensors (``trials`` rounds, alternating their order; the
        first call of a shape pays one-time set-up costs) and remember the fastest. Each result
        is dropped before the next kernel runs, so the peak is one extra gradient, as in training."""
        with self._lock:
            if key in self.chosen:  # another thread timed it meanwhile
                return self.chosen[key]
            best = dict.fromkeys(TIMED, float("inf"))
            for trial in range(self.trials):
                for name in TIMED if trial % 2 == 0 else TIMED[::-1]:
                    start = time.perf_counter()
                    try:
                        KERNEL_FUNCTIONS[name](*args)
                    except torch.OutOfMemoryError:
                        continue  # a kernel that does not fit is never chosen
                    best[name] = min(best[name], time.perf_counter() - start)
            self.timings[key] = best
            self.chosen[key] = min(best, key=best.__getitem__)
            return self.chosen[key]


def _all_rows(g: torch.Tensor, xs: torch.Tensor, rows_last: bool, dtype: torch.dtype) -> torch.Tensor:
    """Every row kept (MIGU paused after the forward): the plain gradient, laid out as the weight."""
    return (xs.t() @ g if rows_last else g.t() @ xs).to(dtype)


def _product(g: torch.Tensor, xs: torch.Tensor, rows_last: bool) -> torch.Tensor:
    # one orientation for every kernel: a row of g^T x is computed alike whichever rows are asked
    # for (a column subset of x^T g is not, in MKL); Conv1D keeps its weight as [in, out]
    grad = g.t() @ xs
    return grad.t() if rows_last else grad


def _dense(
    g: torch.Tensor, xs: torch.Tensor, rows: torch.Tensor | None, rows_last: bool, dtype: torch.dtype
) -> torch.Tensor:
    # contiguous, as the weight: autograd would otherwise copy a transposed (Conv1D) gradient
    grad = _product(g, xs, rows_last).to(dtype).contiguous()
    if rows is not None:
        dropped = torch.ones(g.shape[1], dtype=torch.bool, device=g.device)
        dropped[rows] = False
        grad.masked_fill_(dropped.view(1, -1) if rows_last else dropped.view(-1, 1), 0)
    return grad


def _rows(select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def kernel(
        g: torch.Tensor, xs: torch.Tensor, rows: torch.Tensor, rows_last: bool, dtype: torch.dtype
    ) -> torch.Tensor:
        shape = (xs.shape[1], g.shape[1]) if rows_last else (g.shape[1], xs.shape[1])
        grad = torch.zeros(shape, dtype=dtype, device=g.device)
        # the kept rows in chunks of equal size, so that the copied gradient columns and their
        # product stay small temporaries (peak memory as plain finetuning); none thinner than
        # MIN_CHUNK_ROWS rows (the matmuls lose their efficiency on long batches) unless all are
        chunks = -(-rows.numel() // max(MIN_CHUNK_ROWS, CHUNK_VALUES // g.shape[0]))
        chunks = max(1, min(chunks, rows.numel() // MIN_ROWS))  # and none under MIN_ROWS rows
        for part in rows.tensor_split(chunks):
            grad.index_copy_(1 if rows_last else 0, part, _product(select(g, part), xs, rows_last).to(dtype))
        return grad

    return kernel


KERNEL_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    # gather with an expanded index: fast in bf16, where index_select along dim 1 is slow
    "gather": _rows(lambda g, part: torch.gather(g, 1, part.expand(g.shape[0], -1))),
    "index_select": _rows(lambda g, part: g.index_select(1, part)),
    "dense": _dense,
}


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
        kernels: KernelChoice,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.rows_last = rows_last
        ctx.kept_rows = kept_rows
        ctx.kernels = kernels
        ctx.has_bias = bias is not None
        ctx.compute_dtype = y.dtype
        # a fresh tensor on y's storage, not a view of an input: the model may modify it in
        # place (an inplace ReLU), which autograd forbids on views returned by a Function
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype  # under autocast the layer ran in bf16: so do its gradients
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w = weight.to(dtype)
            grad_x = (g @ (w.t() if ctx.rows_last else w)).reshape(*grad.shape[:-1], -1).to(x.dtype)
        if ctx.needs_input_grad[1]:
            with scope(FAST_GRAD):  # what differs from plain autograd: the weight gradient
                xs = x.reshape(-1, x.shape[-1]).to(dtype)
                grad_w = ctx.kernels.weight_grad(g, xs, ctx.kept_rows(), ctx.rows_last, weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None
