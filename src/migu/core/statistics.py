"""The MIGU statistic: per output channel, |output| summed over the tokens of one optimizer step.

Forward hooks add each training forward's contribution into one fp32 buffer per source
(the last slot of each buffer counts the tokens), detached, with no host synchronisation.
Under torch.distributed the buffers are summed over ranks in a single all-reduce.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from .fastpath import RowSparseLinear
from .selection import cut_index, rankable
from .targets import Side, Source

CHUNK_VALUES = 1 << 20


def distributed_world() -> int:
    """Number of ranks when torch.distributed is initialized, else 1 (nothing called)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a checkpointed block recomputing its forward)."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


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
        self._host_tokens = [0] * len(self.sources)
        # fast path: sources whose weight gradient is computed for kept rows only (set by the handle)
        self.fast_sources: set[int] = set()
        self.threshold = 0.0
        self.fast_rows: dict[int, torch.Tensor] = {}
        self.backward_seen = False
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
                self._record(index, output)
                if index in self.fast_sources and args and isinstance(output, torch.Tensor):
                    return self._fast_output(index, module, args[0], output)
            return None

        return record

    def _fast_output(self, index: int, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if self.backward_seen and not _in_backward():  # a recompute (gradient checkpointing) is fine
            raise RuntimeError(
                "MIGU's fast path saw a training forward after a backward in the same optimizer step "
                "(gradient accumulation?): the rows kept by the first backward would ignore it. "
                "Set micro_batches_per_step to the real number (or fast_path=False)"
            )
        target = self.sources[index].targets[0]
        return RowSparseLinear.apply(
            x, target.weight, target.bias, output.detach(), target.rows_last, lambda: self._kept_rows(index)
        )

    def _kept_rows(self, index: int) -> torch.Tensor:
        """The kept rows of a fast-path source, chosen at its first backward of the step."""
        self.backward_seen = True
        rows = self.fast_rows.get(index)
        if rows is None and (not self.enabled or self.forwards[index] == 0 or distributed_world() > 1):
            # paused, or the statistic was reset, between this forward and its backward (the
            # reference path leaves this gradient dense), or a process group appeared after
            # attaching (the rows must come from the reduced statistic): the dense gradient, which
            # the mask before the step then treats exactly as the reference path does
            return torch.arange(self.buffers[index].numel() - 1, device=self.buffers[index].device)
        if rows is None:
            stat = self.buffers[index][:-1]
            keep = stat.numel() - cut_index(stat.numel(), self.threshold)
            rows = rankable(stat).topk(keep, sorted=False).indices
            self.fast_rows[index] = rows
        return rows

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

    # -- per step ----------------------------------------------------------------------------
    def gather(self, sync_distributed: bool) -> list[torch.Tensor]:
        """The step's buffers ([rows] channel sums + token count), summed over ranks if asked."""
        self.flush_tokens()
        if sync_distributed and distributed_world() > 1:
            flat = torch.cat([b.to(self.buffers[0].device) for b in self.buffers])
            dist.all_reduce(flat)
            for buffer, part in zip(self.buffers, flat.split([b.numel() for b in self.buffers]), strict=True):
                buffer.copy_(part)
        return self.buffers

    def flush_tokens(self) -> None:
        """Move the token counts kept on the host into the buffers' last slot."""
        for index, tokens in enumerate(self._host_tokens):
            if tokens:
                self.buffers[index][-1:].add_(float(tokens))
                self._host_tokens[index] = 0

    def reset(self) -> None:
        for buffer in self.buffers:
            buffer.zero_()
        self.forwards = [0] * len(self.sources)
        self._host_tokens = [0] * len(self.sources)
        self.fast_rows.clear()
        self.backward_seen = False

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
