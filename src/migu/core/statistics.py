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

from .fastpath import FastPath
from .profiling import STATISTIC, WRAP, scope
from .runtime import distributed_world, in_backward
from .targets import Side, Source

CHUNK_VALUES = 1 << 20


class Recorder:
    """Owns the statistic buffers and the forward hooks that fill them."""

    def __init__(
        self, root: nn.Module, sources: Sequence[Source], ignore_padding: bool, fast: FastPath | None = None
    ) -> None:
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
        self.fast = fast  # hands the outputs of its layers to the fast path's backward
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
                fast = self.fast
                if fast is not None and index in fast.on and args and isinstance(output, torch.Tensor):
                    with scope(WRAP):
                        return fast.output(index, args[0], output, self.decided)
            return None

        return record

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
        if not in_backward():
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
