"""Tasks and task sequences, of three kinds (``KINDS``):

- ``options``: labelled text with the candidate labels each example is shown (``Example``);
- ``corpus``: unlabelled text for language modelling (``TextExample``);
- ``instruction``: prompt/response pairs (``InstructionExample``), optionally with what an
  execution-based evaluator needs (``meta``: e.g. a program's tests).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

Kind = Literal["options", "corpus", "instruction"]
KINDS: tuple[Kind, ...] = ("options", "corpus", "instruction")


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


@dataclass(frozen=True)
class TextExample:
    """One piece of unlabelled text of a corpus (a document or a paragraph)."""

    text: str
    task: str = ""


@dataclass(frozen=True)
class InstructionExample:
    """A prompt and the response to learn; ``meta`` carries what an evaluator needs beyond the
    text (for code: the tests and the entry point)."""

    prompt: str
    response: str
    task: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


AnyExample = Example | TextExample | InstructionExample
_EXAMPLE_OF_KIND = {"options": Example, "corpus": TextExample, "instruction": InstructionExample}


@dataclass
class Task:
    """A named task of one ``kind``: an instruction and label set (``options`` tasks), its splits,
    and optional extras a protocol may use (``extras``, e.g. a corpus's end task)."""

    name: str
    instruction: str
    labels: tuple[str, ...]
    train: list[Any]
    test: list[Any]
    validation: list[Any] = field(default_factory=list)
    category: str = ""
    kind: Kind = "options"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; choose {', '.join(KINDS)}")
        if not self.train:
            raise ValueError(f"task {self.name!r} has no training examples")
        if not self.test:
            raise ValueError(f"task {self.name!r} has no test examples")
        expected = _EXAMPLE_OF_KIND[self.kind]
        for split in ("train", "test", "validation"):
            wrong = next((e for e in getattr(self, split) if not isinstance(e, expected)), None)
            if wrong is not None:
                raise ValueError(
                    f"task {self.name!r} ({self.kind}): a {split} example is a {type(wrong).__name__}, "
                    f"not a {expected.__name__}"
                )
        if self.kind == "options" and len(set(self.labels)) < 2:
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
        kinds = sorted({t.kind for t in self.tasks})
        if len(kinds) > 1:
            raise ValueError(f"task sequence {self.name!r} mixes task kinds {kinds}: one kind per sequence")

    @property
    def kind(self) -> Kind:
        return self.tasks[0].kind

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def digest(self) -> str:
        """A hash of what the sequence trains and scores on (each task's name, instruction, labels,
        every split's examples and its extras, e.g. a corpus's end task), whatever folder they were
        read from; fed one example at a time."""
        sha = hashlib.sha256()
        for task in self.tasks:
            _feed(sha, task)
        return sha.hexdigest()[:16]

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


def _feed(sha: Any, item: Any) -> None:
    """Feed ``item`` (a task, an example, plain data) to ``sha``, large lists item by item."""
    if isinstance(item, Task):
        for part in (item.name, item.instruction, list(item.labels), item.extras):
            _feed(sha, part)
        for split in (item.train, item.test, item.validation):
            sha.update(b"[%d" % len(split))
            for example in split:
                _feed(sha, example)
    elif isinstance(item, dict) and any(isinstance(v, Task) for v in item.values()):
        for key in sorted(item):
            _feed(sha, key)
            _feed(sha, item[key])
    else:
        plain = asdict(item) if is_dataclass(item) and not isinstance(item, type) else item
        sha.update(json.dumps(plain, sort_keys=True, default=str).encode() + b"\n")
