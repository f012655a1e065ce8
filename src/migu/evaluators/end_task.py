"""DAS end tasks: how useful the continually pre-trained model is for each domain's labelled task.

For each domain (a ``corpus`` task whose ``extras["end_task"]`` is an ``options`` task), a deep
copy of the model (adapters included: a PEFT model's adapters are merged into the copy) is
finetuned on the end task's training examples with the options format of the architecture
(encoder: ``EncoderFormat`` on the bare encoder, without the MLM head; decoder: ``DecoderFormat``
ranking the options by log-likelihood; encoder-decoder: ``EncoderDecoderFormat``), every
parameter trainable, then scored on the end task's test examples by accuracy and macro-F1
(``end_accuracy``, ``end_macro_f1``, percent). The continually trained model is left
bit-identical, and torch's global random state is restored afterwards, so a run's training does
not depend on whether (or how often) end tasks were scored.

By default the end tasks are scored only after the last domain (``final_only``, the DAS protocol);
``every_domain: true`` scores them after every domain too (an end-task matrix, 6 x the cost).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..formats.options import DecoderFormat, EncoderDecoderFormat, EncoderFormat
from ..precision import autocast
from .base import EvalContext, ScoreSpec, register_evaluator
from .classification import label_scores


@dataclass
class EndTaskConfig:
    lr: float = 5e-5
    """AdamW learning rate of the end-task finetuning."""
    epochs: int = 3
    """Passes over the end task's training examples."""
    batch_size: int = 16
    """Examples per optimizer step of the end-task finetuning."""
    n_train: int | None = None
    """End-task training examples used (a seeded sample; None: all the source gives)."""
    n_test: int | None = None
    """End-task test examples scored (the first n; None: all)."""
    max_length: int = 128
    """Tokens per end-task input at most (at least 8)."""
    every_domain: bool = False
    """Score the end tasks after every domain, not only after the last."""
    seed: int = 0
    """Seed of the end-task sample and finetuning (combined with each domain's name)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError(f"end_task needs lr > 0, epochs >= 1, batch_size >= 1 and max_length >= 8; got {self}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"evaluators.end_task.{name} must be at least 1 (or null); got {value}")


def options_format(arch: str, tokenizer: Any, max_length: int) -> Any:
    """The options format that finetunes and answers an end task on a model of ``arch``."""
    if arch == "encoder":
        return EncoderFormat(tokenizer, max_length)
    if arch == "decoder":
        return DecoderFormat(tokenizer, max_length, evaluation="rank")
    if arch == "encoder_decoder":
        return EncoderDecoderFormat(tokenizer, max_length)
    raise ValueError(f"end_task: unknown model kind {arch!r}")


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the module hooks attached to it: those of the continual
    run (MIGU's statistic, a method's bookkeeping) belong to the model being trained, and would
    record into (or fail to copy with) the run's own state. The model itself is untouched."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if "hooks" in name and isinstance(value, dict) and value:
                memo[id(value)] = type(value)()
    return copy.deepcopy(model, memo)


def end_task_model(model: nn.Module, arch: str) -> nn.Module:
    """A trainable deep copy of ``model`` for an end task, without the run's hooks (``plain_copy``):
    adapters merged, the MLM head dropped (encoders train their bare encoder), every parameter
    trainable."""
    clone = plain_copy(model)
    while isinstance(inner := getattr(clone, "module", None), nn.Module):  # DDP-style wrappers
        clone = inner
    merge = getattr(clone, "merge_and_unload", None)
    if callable(merge):  # PEFT: the adapters become part of the weights
        clone = merge()
    if arch == "encoder" and isinstance(encoder := getattr(clone, "encoder_model", None), nn.Module):
        clone = encoder
    for param in clone.parameters():
        param.requires_grad_(True)
    return clone


class EndTask:
    """Accuracy and macro-F1 of a finetuned copy on each domain's end task."""

    name = "end_task"
    per_task = True
    final_only = False

    def __init__(self, config: EndTaskConfig | None = None) -> None:
        self.config = config or EndTaskConfig()
        self.final_only = not self.config.every_domain

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("end_accuracy", True), ScoreSpec("end_macro_f1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        task = ctx.task
        if task is None:
            raise ValueError("end_task needs the task being scored (EvalContext.task)")
        end = task.extras.get("end_task")
        if end is None:
            raise ValueError(f"task {task.name!r} has no end task (extras['end_task']): the end_task evaluator "
                             "needs one per domain")  # fmt: skip
        if end.kind != "options":
            raise ValueError(f"the end task of {task.name!r} must be an options task, not {end.kind}")
        if ctx.tokenizer is None or not ctx.arch:
            raise ValueError("end_task needs the tokenizer and the model kind (EvalContext.tokenizer, .arch)")
        cfg = self.config
        seed = cfg.seed + zlib.crc32(task.name.encode())
        train = list(end.train)
        if cfg.n_train is not None and cfg.n_train < len(train):
            train = [train[i] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
                     [: cfg.n_train].tolist()]  # fmt: skip
        test = list(end.test)[: cfg.n_test]
        options = options_format(ctx.arch, ctx.tokenizer, cfg.max_length)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clone = end_task_model(model, ctx.arch)
            finetune(clone, options, train, cfg, ctx)
            scores = label_scores(clone, options, test, ctx)
        del clone
        return {"end_accuracy": scores["accuracy"], "end_macro_f1": scores["macro_f1"]}


def finetune(model: nn.Module, fmt: Any, examples: list[Any], cfg: EndTaskConfig, ctx: EvalContext) -> None:
    """``cfg.epochs`` seeded passes of AdamW over ``examples`` (the caller seeds torch)."""
    if not examples:
        raise ValueError(f"the end task of {ctx.desc or 'a domain'} has no training examples")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    device = next(model.parameters()).device
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(examples)).tolist()
        for start in range(0, len(order), cfg.batch_size):
            batch = fmt.batch([examples[i] for i in order[start : start + cfg.batch_size]])
            with autocast(ctx.mixed_precision, device):
                loss = fmt.loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()


register_evaluator("end_task", EndTask, EndTaskConfig, kinds=("corpus",))
