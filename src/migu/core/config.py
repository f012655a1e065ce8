"""Configuration of MIGU: which layers, how the statistic is gathered, how rows are masked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PRESETS = ("attention", "ffn", "all_linear")
MaskMode = Literal["grad", "update", "observe"]
MaskTiming = Literal["step", "in_backward"]
Reduction = Literal["sum", "mean"]
Selection = Literal["magnitude", "random", "gradient", "given"]


@dataclass
class MiguConfig:
    """Settings of one MIGU attachment. Every field is checked in ``__post_init__``.

    The defaults follow the official implementation (threshold 0.7 for full finetuning,
    every attention and FFN linear layer, all tokens counted, gradients masked).
    """

    threshold: float = 0.7
    """Fraction T in [0, 1) of output channels whose weight-gradient rows are zeroed.
    A row is kept when its statistic is at or above the T-quantile (linear interpolation)
    of its layer's statistic; T = 0 keeps every row."""

    layers: str = "all_linear"
    """Preset of target layers: ``attention`` (q, k, v, o projections), ``ffn`` (the 2 or 3
    linear layers of each feed-forward block) or ``all_linear`` (every supported linear layer
    except the output embedding)."""

    include: tuple[str, ...] = ()
    """Regular expressions (``re.search`` on the module name); when given, only layers of the
    preset whose name matches one of them are targeted. Each pattern must match a layer."""

    exclude: tuple[str, ...] = ()
    """Regular expressions of module names to leave untouched. Each must match a layer."""

    include_lm_head: bool = False
    """Also target the output embedding (``lm_head``) and any layer tied to the input
    embedding. Off by default, as in the paper. Its statistic covers the positions the head is
    applied to: migu's decoder formats apply it only where the loss reads the next token (not
    at the prompt, the last token or padding), so there it counts exactly those positions."""

    reduction: Reduction = "sum"
    """``sum`` of |output| over the step's tokens, or its ``mean`` (sum / token count).
    Both rank rows identically; ``mean`` keeps magnitudes comparable across steps."""

    ignore_padding: bool = False
    """Count only real tokens. The token mask is taken from the model call's
    ``attention_mask`` (encoder side) and ``decoder_attention_mask`` or ``labels != -100``
    (decoder side of encoder-decoder models), or set with ``handle.set_token_mask``.
    Off by default: the official code counts padding tokens too."""

    mask_mode: MaskMode = "grad"
    """``grad``: multiply masked rows of ``weight.grad`` by 0 just before the optimizer step
    (official; Adam momentum and weight decay still move those rows). ``update``: masked rows
    are left exactly unchanged by the optimizer step (their values are restored after it).
    ``observe``: compute the statistic and the selection and record the kept rows (``report``,
    ``kept_masks``) without touching any gradient or weight: plain finetuning that records
    which rows MIGU would have kept."""

    mask_timing: MaskTiming = "step"
    """When the mask reaches the gradient. ``step`` (default): once per optimizer step, after
    the last backward, on ``.grad`` (exact with any gradient accumulation). ``in_backward``: for
    engines that consume gradients during backward (DeepSpeed ZeRO, anything reducing or
    partitioning gradients in backward hooks). The rows are chosen when the step's last backward
    starts (the statistic of every forward of the step is then complete, and is all-reduced
    there), and each weight gradient produced by that backward is masked as autograd produces it
    (the fast path's row-sparse gradient, and a gradient hook on the weight). Needs
    ``micro_batches_per_step``, which says which backward is the last. Exact for one micro-batch
    per step; with accumulation only the last micro-batch's contribution is masked: the gradient
    of masked rows is the sum of the earlier micro-batches' contributions, unmasked (MIGU does
    not mask ``.grad`` again before the step, since such engines keep no ``.grad``). ``update``
    mode restores the module's weights after the step, which an engine that keeps its own
    master weights (DeepSpeed) overwrites: it raises when the step finds no ``.grad``."""

    mask_bias: bool = False
    """Also zero the bias entries of masked rows. Off by default (bias untouched)."""

    selection: Selection = "magnitude"
    """What rows are ranked by (``migu.core.scores``). ``magnitude`` is MIGU. ``random`` is the
    control: per layer and step, keep as many rows as the magnitude rule would, chosen uniformly
    at random. ``gradient``: the squared norm of each row of the step's weight gradient.
    ``given``: scores set with ``MiguHandle.set_row_scores`` (e.g. a per-task Fisher diagonal).
    The last two need ``mask_timing="step"`` (the whole gradient, or the scores, at the step)."""

    seed: int = 0
    """Seed of the ``random`` selection; the same on every rank, so all ranks agree."""

    micro_batches_per_step: int | None = None
    """Forward/backward passes per optimizer step, if known (the training loop's gradient
    accumulation). With 1, the fast path applies: weight gradients are computed for the kept
    rows only, with the same result as masking dense gradients. Unknown (None) or more than
    one: the reference path (dense gradients, masked before the step)."""

    fast_path: bool = True
    """Use the fast path where it gives the reference path's result (see
    ``micro_batches_per_step``): plain Linear and Conv1D layers (not subclasses with their own
    forward), magnitude selection, one process or FSDP2-sharded weights (the statistic is then
    all-reduced when the backward starts); with ``mask_timing="in_backward"``, for the last
    micro-batch of every step. Rows tied exactly at the cut are the one difference: the fast path
    keeps exactly ``rows - ceil(T * (rows - 1))`` of them (and ``report``/``kept_masks`` list the
    rows it kept)."""

    fast_path_kernel: str = "auto"
    """How the fast path computes the kept rows' weight gradient: ``gather`` or ``index_select``
    (copy the kept columns of the output gradient, multiply for those rows only) or ``dense``
    (the full product, dropped rows zeroed). ``auto`` (default): on a CPU, ``gather`` and
    ``index_select`` are timed on the first backward of each layer shape (shape, dtypes, kept
    rows, tokens rounded up to a power of two) and the faster is kept, a one-time cost of a few
    extra products per shape; elsewhere ``gather``. The two hand the same tensor to the same
    matmul, so the choice changes speed, never results. ``dense`` (never chosen by ``auto``)
    may differ from them in the last bits where a multi-threaded BLAS splits a full product
    differently from a product of some rows."""

    measure_update_leak: bool = False
    """Diagnostic: measure the share of each step's squared weight update that lands on masked
    rows (Adam momentum and weight decay in ``grad`` mode; 0 in ``update`` mode); read it with
    ``handle.update_leak()``. Costs a copy of the masked weights per step."""

    sync_distributed: bool = True
    """Sum the statistic over ranks (one all-reduce per step) when torch.distributed is
    initialized, so that every rank masks the same rows."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise TypeError(f"threshold must be a number in [0, 1), got {self.threshold!r}")
        if not 0.0 <= float(self.threshold) < 1.0:
            raise ValueError(
                f"threshold must be in [0, 1) (the fraction of rows whose gradient is zeroed), got {self.threshold}"
            )
        self.threshold = float(self.threshold)
        if self.layers not in PRESETS:
            raise ValueError(f"unknown layer preset {self.layers!r}; choose one of {', '.join(PRESETS)}")
        self.include = _patterns("include", self.include)
        self.exclude = _patterns("exclude", self.exclude)
        _choice("reduction", self.reduction, ("sum", "mean"))
        _choice("mask_mode", self.mask_mode, ("grad", "update", "observe"))
        _choice("mask_timing", self.mask_timing, ("step", "in_backward"))
        _choice("selection", self.selection, ("magnitude", "random", "gradient", "given"))
        if self.selection in ("gradient", "given") and self.mask_timing != "step":
            raise ValueError(f"selection={self.selection!r} ranks rows at the optimizer step: it needs "
                             f"mask_timing='step', got {self.mask_timing!r}")  # fmt: skip
        _choice("fast_path_kernel", self.fast_path_kernel, ("auto", "gather", "index_select", "dense"))
        if self.micro_batches_per_step is not None and (
            isinstance(self.micro_batches_per_step, bool)
            or not isinstance(self.micro_batches_per_step, int)
            or self.micro_batches_per_step < 1
        ):
            raise ValueError(
                f"micro_batches_per_step must be a positive integer or None, got {self.micro_batches_per_step!r}"
            )


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _patterns(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{name} must be a list of regular expressions, got {value!r}")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{name} pattern {pattern!r} is not a valid regular expression: {err}") from err
    return tuple(value)
