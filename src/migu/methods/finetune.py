"""Sequential finetuning: every parameter trains on each task in turn, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from .base import METHODS, Method


@dataclass
class FinetuneConfig:
    """Sequential finetuning has no settings of its own."""


class Finetune(Method):
    name = "finetune"
    stage = "model"

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()


METHODS.register("finetune", Finetune, FinetuneConfig, decides_training=True)
