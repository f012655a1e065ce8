"""Tasks and task sequences: labelled text with the candidate labels each example is shown."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One example, self-contained so that examples of several tasks can share a batch:
    the input text, its gold label, the candidate labels (options), the task's instruction
    and the task's name (used only if a format is asked to leak it)."""

    text: str
    label: str
    options: tuple[str, ...]
    instruction: str = ""
    task: str = ""

    def __post_init__(self) -> None:
        if self.label not in self.options:
            raise ValueError(f"label {self.label!r} is not one of the options {list(self.options)}")


@dataclass
class Task:
    """A named task: an instruction, its label set, and its splits."""

    name: str
    instruction: str
    labels: tuple[str, ...]
    train: list[Example]
    test: list[Example]
    validation: list[Example] = field(default_factory=list)
    category: str = ""

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError(f"task {self.name!r} has no training examples")
        if not self.test:
            raise ValueError(f"task {self.name!r} has no test examples")
        if len(set(self.labels)) < 2:
            raise ValueError(f"task {self.name!r} needs at least two distinct labels, got {list(self.labels)}")


@dataclass
class TaskSequence:
    """Tasks in training order."""

    name: str
    tasks: list[Task]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError(f"task sequence {self.name!r} is empty")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task sequence {self.name!r} repeats a task: {names}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]


Pair = tuple[str, str]


def sample_splits(
    train_all: Sequence[Pair], test_all: Sequence[Pair], n_train: int | None, n_test: int | None,
    n_validation: int, rng: random.Random,
) -> tuple[list[Pair], list[Pair], list[Pair]]:  # fmt: skip
    """Seeded (train, validation, test) samples: validation is held out of the training data,
    disjoint from the training sample; ``None`` or more than available takes all."""
    order = list(range(len(train_all)))
    rng.shuffle(order)
    n_val = min(n_validation, max(0, len(order) - 1))
    validation = [train_all[i] for i in order[:n_val]]
    train = [train_all[i] for i in order[n_val:][:n_train]]
    test = rng.sample(list(test_all), min(len(test_all), n_test)) if n_test is not None else list(test_all)
    return train, validation, test


def make_examples(
    rows: Sequence[tuple[str, str]], options: Sequence[str], where: str, instruction: str = "", task: str = ""
) -> list[Example]:
    """Examples from (text, label) pairs; a label outside ``options`` is an error naming ``where``."""
    opts = tuple(options)
    allowed = set(opts)
    out = []
    for index, (text, label) in enumerate(rows):
        if label not in allowed:
            raise ValueError(f"{where}: example {index} has label {label!r}, which is not in {list(opts)}")
        out.append(Example(text, label, opts, instruction, task))
    return out
