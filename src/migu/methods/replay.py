"""Replay: keep a small seeded sample of each finished task's training data and mix it into
every later task (with finetune: FTReplay; with lora: LoRAReplay)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..data.tasks import Example, InstructionExample, TextExample
from .base import METHODS, Method, TaskContext


@dataclass
class ReplayConfig:
    fraction: float = 0.02
    """Share of each finished task's training examples kept for replay (at least one)."""

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"replay fraction must be in (0, 1], got {self.fraction}")


class Replay(Method):
    name = "replay"
    stage = "data"

    def __init__(self, config: ReplayConfig | None = None) -> None:
        self.config = config or ReplayConfig()
        self.memory: list[Example] = []

    def train_examples(self, examples: list[Example], ctx: TaskContext) -> list[Example]:
        mixed = list(examples) + self.memory
        random.Random(f"replay:{ctx.seed}:{ctx.index}").shuffle(mixed)
        return mixed

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        train = ctx.task.train
        count = max(1, round(self.config.fraction * len(train)))
        self.memory += random.Random(f"replay-keep:{ctx.seed}:{ctx.index}").sample(train, min(count, len(train)))
        return {"memory": len(self.memory)}

    def state_dict(self) -> dict[str, Any]:
        return {"memory": [{"type": type(e).__name__, **asdict(e)} for e in self.memory]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = [_example(dict(e)) for e in state.get("memory", [])]


_TYPES = {cls.__name__: cls for cls in (Example, TextExample, InstructionExample)}


def _example(saved: dict[str, Any]) -> Any:
    """An example of any task kind back from ``state_dict`` (older states hold options examples
    without a type)."""
    cls = _TYPES[saved.pop("type", "Example")]
    if cls is Example:
        saved["options"] = tuple(saved["options"])
    return cls(**saved)


METHODS.register("replay", Replay, ReplayConfig, migu_threshold=0.4)
