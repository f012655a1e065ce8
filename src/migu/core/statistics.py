"""The MIGU statistic: per output channel, |output| summed over the tokens of one optimizer step.

Forward hooks add each training forward's contribution into one fp32 buffer per source
(the last slot of each buffer counts the tokens), detached, with no host synchronisation.
Under torch.distributed the buffers are summed over ranks in a single all-reduce.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from .fastpath import KernelChoice, RowSparseLinear
from .profiling import STATISTIC, WRAP, scope
from .targets import Side, Source

CHUNK_VALUES = 1 << 20


def distributed_world() -> int:
    """Number of ranks when torch.distributed is initialized, else 1 (nothing called)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def current_backward() -> int | None:
    """Id of the backward pass autograd is running on this thread, or None outside backward."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    task = current() if current is not None else -1
    return None if task == -1 else int(task)


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed block recomputing its forward)."""
    return current_backward() is not None


class Recorder:
    """Owns the statistic buffers and the forward hooks that fill them."""

    def __init__(self, root: nn.Module, sources: Sequence[Source], ignore_padding: bool) -> None:
        self.sources = list(sources)
        self.ignore_padding = ignore_padding
        self.enabled = True
        self.buffers = [
            torch.zeros(s.rows() + 1, dtype=torch.float32, device=s.targets[0].weight.device) for s in self.sources
        ]
        self.forwards = [0] * len(self.sources)
        self.recorded = 0  # forwards recorded in this step, over all sources
        self.outside = 0  # of which outside backward (not recomputed by gradient checkpointing)
        self._host_tokens = [0] * len(self.sources)
        # fast path: sources whose weight gradient is computed for kept rows only, the number of
        # ranks when they were chosen, and where their kept rows come from (all set by the handle)
        self.fast_sources: set[int] = set()
        self.fast_world = 1
        self.choose_rows: Callable[[int], torch.Tensor | None] = lambda index: None
        self.kernels = KernelChoice()  # the fast path's kernel per layer shape (set by the handle)
        self.decided = False  # this step's rows are chosen: a training forward now comes too late
        self._derived: dict[Side, torch.Tensor | None] = {}
        self._explicit: dict[Side, torch.Tensor | None] = {}
        self._warned_no_mask = False
        config = getattr(root, "config", None)
        self._encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        self.hooks: list[RemovableHandle] = [
            s.module.register_forward_hook(self._hook(i)) for i, s in enumerate(self.sources)
        ]
        if ignore_padding:
            self.hooks.append(root.register_forward_pre_hook(self._capture_masks, with_kwargs=True))
            self.hooks.append(root.register_forward_hook(self._clear_masks, always_call=True))

    # -- token masks -------------------------------------------------------------------------
    def set_token_mask(self, input: torch.Tensor | None = None, decoder: torch.Tensor | None = None) -> None:
        self._explicit = {"input": input, "decoder": decoder}

    def _capture_masks(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        decoder = kwargs.get("decoder_attention_mask")
        labels = kwargs.get("labels")
        if decoder is None and self._encoder_decoder and isinstance(labels, torch.Tensor):
            decoder = labels != -100
        self._derived = {"input": kwargs.get("attention_mask"), "decoder": decoder}

    def _clear_masks(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._derived = {}

    def _token_mask(self, side: Side, lead: torch.Size) -> torch.Tensor | None:
        masks = {k: v for k, v in {**self._derived, **self._explicit}.items() if v is not None}
        if not masks and not self._warned_no_mask:
            self._warned_no_mask = True
            warnings.warn(
                "MIGU ignore_padding=True but the model was called without an attention_mask keyword "
                "and no mask was set with set_token_mask(): every token is counted",
                stacklevel=3,
            )
        matches = [k for k, m in masks.items() if tuple(m.shape) == tuple(lead)]
        if not matches:
            return None  # e.g. a pooled [batch, channels] output: every row is a real example
        return masks[side] if side in matches else masks[matches[0]]

    # -- recording ---------------------------------------------------------------------------
    def _hook(self, index: int):
        def record(module: nn.Module, args: tuple, output: Any) -> Any:
            if self.enabled and module.training and torch.is_grad_enabled():
                with scope(STATISTIC):
                    self._record(index, output)
                if index in self.fast_sources and args and isinstance(output, torch.Tensor):
                    with scope(WRAP):
                        return self._fast_output(index, module, args[0], output)
            return None

        return record

    def _fast_output(self, index: int, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if self.decided and not _in_backward():  # a recompute (gradient checkpointing) is fine
            raise RuntimeError(
                "MIGU's fast path saw a training forward after a backward in the same optimizer step "
                "(gradient accumulation?): the rows kept by the first backward would ignore it. "
                "Set micro_batches_per_step to the real number (or fast_path=False)"
            )
        target = self.sources[index].targets[0]  # read now: under FSDP2 the unsharded weight
        return RowSparseLinear.apply(
            x,
            target.weight,
            target.bias,
            output.detach(),
            target.rows_last,
            lambda: self._kept_rows(index),
            self.kernels,
        )

    def world_changed(self) -> bool:
        """A process group appeared (or went) since the fast path was chosen."""
        return distributed_world() != self.fast_world

    def _kept_rows(self, index: int) -> torch.Tensor:
        """The rows of a fast-path source whose weight gradient its backward computes."""
        rows = None
        if self.enabled and self.forwards[index] and not self.world_changed():
            rows = self.choose_rows(index)
        # None: paused, or the statistic was reset, between this forward and its backward (the
        # reference path leaves this gradient dense), a process group appeared after attaching (the
        # rows must come from the reduced statistic), or not the step's last backward (in-backward
        # timing): the dense gradient, which the mask before the step treats as the reference does
        buffer = self.buffers[index]
        return rows if rows is not None else torch.arange(buffer.numel() - 1, device=buffer.device)

    def _record(self, index: int, output: Any) -> None:
        out = (output if isinstance(output, torch.Tensor) else output[0]).detach()
        channels = out.shape[-1]
        flat = out.reshape(-1, channels)
        mask = self._token_mask(self.sources[index].side, out.shape[:-1]) if self.ignore_padding else None
        buffer = self.buffers[index]
        # |output| summed over tokens in fp32, in chunks of about 1M values: one pass over the
        # output, with small temporaries (large ones cost page faults and raise peak memory)
        rows = max(1, CHUNK_VALUES // channels)
        if mask is None:
            for chunk in flat.split(rows):
                buffer[:-1].add_(chunk.abs().sum(0, dtype=torch.float32))
            self._host_tokens[index] += flat.shape[0]
        else:
            weights = mask.reshape(-1).to(device=out.device, dtype=torch.float32)
            for chunk, w in zip(flat.split(rows), weights.split(rows), strict=True):
                buffer[:-1].addmv_(chunk.abs().t().to(torch.float32), w)
            buffer[-1:].add_(weights.sum())
        self.forwards[index] += 1
        self.recorded += 1
        if not _in_backward():
            self.outside += 1

    # -- per step ----------------------------------------------------------------------------
    def gather(self, sync_distributed: bool, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The step's buffers ([rows] channel sums + token count); those of ``indices`` (default
        all) summed over ranks if asked, in one all-reduce."""
        self.flush_tokens()
        if sync_distributed and distributed_world() > 1:
            chosen = [self.buffers[i] for i in indices] if indices is not None else self.buffers
            flat = torch.cat([b.to(self.buffers[0].device) for b in chosen])
            dist.all_reduce(flat)
            for buffer, part in zip(chosen, flat.split([b.numel() for b in chosen]), strict=True):
                buffer.copy_(part)
        return self.buffers

    def flush_tokens(self) -> None:
        """Move the token counts kept on the host into the buffers' last slot."""
        for index, tokens in enumerate(self._host_tokens):
            if tokens:
                self.buffers[index][-1:].add_(float(tokens))
                self._host_tokens[index] = 0

    def statistics(self, mean: bool) -> dict[str, torch.Tensor]:
        """The statistic so far, per source: the sums, or (``mean``) the sums over the tokens counted."""
        self.flush_tokens()
        out = {}
        for source, buffer in zip(self.sources, self.buffers, strict=True):
            out[source.name] = buffer[:-1] / buffer[-1].clamp(min=1) if mean else buffer[:-1].clone()
        return out

    def token_counts(self) -> dict[str, float]:
        self.flush_tokens()
        return {s.name: float(b[-1]) for s, b in zip(self.sources, self.buffers, strict=True)}

    def reset(self) -> None:
        for buffer in self.buffers:
            buffer.zero_()
        self.forwards = [0] * len(self.sources)
        self.recorded = self.outside = 0
        self._host_tokens = [0] * len(self.sources)
        self.decided = False

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
