"""``gradient``: rows ranked by the step's own weight gradient (its squared L2 norm per row).

The obvious control for MIGU: importance read from the loss rather than from activations. Per
step, as MIGU, with the same threshold, layers, modes and first task unmasked; only the score
differs (``migu.core.scores``). Written ``finetune+gradient`` or ``lora+gradient``.
"""

from __future__ import annotations

from dataclasses import replace

from .base import METHODS
from .migu_method import Migu, MiguMethodConfig


class GradientRows(Migu):
    """Keeps the top ``1 - T`` rows of each layer by the squared norm of their weight gradient."""

    name = "gradient"

    def __init__(self, config: MiguMethodConfig | None = None) -> None:
        config = config or MiguMethodConfig()
        super().__init__(MiguMethodConfig(config.skip_first_task, replace(config.core, selection="gradient")))


METHODS.register("gradient", GradientRows, MiguMethodConfig, chooses_rows=True)
