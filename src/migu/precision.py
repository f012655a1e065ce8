"""Mixed precision in one place: bf16 autocast when a run asks for it (``mixed_precision: bf16``);
weights, gradients, optimizer state and MIGU's statistic stay fp32."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def autocast(mixed_precision: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``mixed_precision`` is ``bf16``, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")
