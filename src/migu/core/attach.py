"""``attach``: MIGU on a model in one call (the public entry point; ``MiguHandle`` is the object)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .config import MiguConfig
from .handle import MiguHandle


def attach(
    model: nn.Module,
    config: MiguConfig | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    **overrides: Any,
) -> MiguHandle:
    """Attach MIGU to ``model``; ``overrides`` are ``MiguConfig`` fields (``threshold=0.7``, ...).

    With ``optimizer``, masking runs automatically around each ``optimizer.step()``; otherwise
    call ``handle.before_optimizer_step()`` and ``handle.after_optimizer_step()`` around it.
    """
    if config is None:
        config = MiguConfig(**overrides)
    elif overrides:
        config = replace(config, **overrides)
    return MiguHandle(model, config, optimizer=optimizer)
