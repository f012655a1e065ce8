"""What a task format is: the one required shape and the optional abilities, as Protocols, and
the registry of formats by (task kind, model kind).

A format turns examples of one task kind into batches for one kind of model and gives the
training loss (``Format``). Some formats can do more, and the code that needs it asks with
``isinstance`` against a runtime-checkable Protocol instead of reading attributes by name:

- ``Answers``: predicts an answer string per example (labelled options: the ``classification``
  evaluator's accuracy and macro-F1);
- ``TokenLoss``: summed token loss and token count of a batch (held-out loss averaged over
  tokens, not batches: the ``lm_loss`` evaluator);
- ``Replays``: stores rows with the model's outputs and replays them as losses (DER++).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..registry import Registry

Batch = dict[str, Any]
Records = list[dict[str, Any]]
LossPair = tuple[torch.Tensor | None, torch.Tensor | None]


@runtime_checkable
class Format(Protocol):
    """How a model learns a task kind: ``batch`` collates examples, ``loss`` is the training loss
    of a batch."""

    def batch(self, examples: list[Any]) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


@runtime_checkable
class Answers(Protocol):
    """A format that answers: one predicted answer string per example."""

    def predict(self, model: nn.Module, examples: list[Any]) -> list[str]: ...


@runtime_checkable
class TokenLoss(Protocol):
    """A language-modelling format: ``(summed loss, token count)`` of a batch it collates."""

    def batch(self, examples: list[Any]) -> Batch: ...

    def token_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]: ...


@runtime_checkable
class Replays(Format, Protocol):
    """A format DER++ can replay: ``snapshot`` stores rows with the model's outputs (the top-k
    logits of each row for a causal LM), ``replay_losses`` gives the logit MSE on stored logits
    and the label cross-entropy on stored labels (either None when its records are empty)."""

    def snapshot(self, model: nn.Module, examples: list[Any], top_k: int | None) -> Records: ...

    def replay_losses(self, model: nn.Module, logit_records: Records, label_records: Records) -> LossPair: ...


FormatFactory = Callable[..., Format]
FORMATS: Registry[Format] = Registry("format", "format")
"""Formats by ``"<task kind>/<model kind>"`` (``options/encoder``, ``corpus/decoder``, ...); each
factory takes ``(tokenizer, max_length, with_task_name, **options)``; traits ``kind``, ``arch``."""


def register_format(kind: str, arch: str, factory: FormatFactory) -> None:
    """Register the format of a (task kind, model kind) pair (``FORMATS``)."""
    FORMATS.register(f"{kind}/{arch}", factory, kind=kind, arch=arch)


def make_format(
    arch: str, tokenizer: Any, max_length: int, with_task_name: bool = False, kind: str = "options", **options: Any
) -> Format:
    """The format for a task kind (``options``, ``corpus``, ``instruction``) on a model kind
    (``encoder``, ``decoder``, ``encoder_decoder``); ``options`` are the format's own settings
    (the run's ``format:`` section)."""
    name = f"{kind}/{arch}"
    if name not in FORMATS:
        raise ValueError(f"no format for {kind} tasks on an {arch} model; known pairs: {', '.join(FORMATS.names())}")
    return FORMATS.entry(name).factory(tokenizer, max_length, with_task_name, **options)


def unwrap(model: nn.Module) -> Any:
    """The model inside a DDP/FSDP wrapper (``generate`` and config live there)."""
    return getattr(model, "module", model)
