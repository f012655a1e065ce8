"""DER++ (Buzzega et al., 2020, "Dark Experience for General Continual Learning"): rehearsal of
stored examples with the model's outputs at the time they were stored.

A reservoir buffer (``buffer_size`` items, each a uniform sample of every example streamed so far)
holds examples with the model's logits when they were stored. At every micro-batch the loss gains
``alpha * MSE(logits, stored logits)`` on one replayed batch and ``beta * CE`` on another replayed
batch's labels (``replay_batch_size`` items each). What is stored, per task kind (through the
task format: ``snapshot`` and ``replay_losses``):

- masked LM (``corpus`` on an encoder): the masked rows, their labels and the logits of the
  masked positions only (``mlm_top_k`` None: the whole vocabulary, as DER++ stores them; with
  MiniLM about 19 positions x 30522 logits x 2 bytes = 1.2 MB per 128-token row);
- causal LM (``corpus`` on a decoder): the rows and, at every predicting position, the ``top_k``
  largest logits with their token ids (64 x 6 bytes per token instead of the vocabulary); the
  logit term compares the current logits of those ids;
- options tasks: the example and the format's score of each of its options (encoders: the scaled
  cosine similarities; decoders: each option's summed log-likelihood).

Logits are stored in float16, computed in eval mode without gradients (no dropout sample as
target; MIGU's statistic ignores such forwards). The current logits are rounded the same way,
with the gradient of the unrounded ones, so the logit term is 0 while the model has not changed
(up to the float rounding of a row padded differently than when stored: about 1e-13).

The stream: the loop does not pass its batches to methods, so DER++ walks a seeded permutation of
the task's training examples, ``micro_batch_size`` per micro-batch, and offers each to the
reservoir; only the examples the reservoir keeps are run through the model (one small no-grad
forward now and then). As in DER++, replay starts on the first task, from the examples already
stored. The buffer and the reservoir's count survive restarts (``state_dict``); the stream restarts
with each task.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import Example
from ..formats.base import LossPair, Records, Replays
from ..formats.causal import label_log_likelihoods
from .base import METHODS, Method, TaskContext


@dataclass
class DerppConfig:
    buffer_size: int = 200
    """Examples kept (reservoir sampling over every task's stream)."""
    alpha: float = 0.1
    """Weight of the logit-matching MSE term."""
    beta: float = 0.5
    """Weight of the replayed labels' cross-entropy term."""
    replay_batch_size: int | None = None
    """Items per replayed batch (each of the two); by default the loop's micro-batch size."""
    top_k: int = 64
    """Causal LM: logits kept per position (the k largest, with their token ids)."""
    mlm_top_k: int | None = None
    """Masked LM: None keeps every vocabulary logit of the masked positions; k keeps the k largest."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.alpha < 0 or self.beta < 0 or self.top_k < 1:
            raise ValueError(f"DER++ needs buffer_size >= 1, alpha >= 0, beta >= 0 and top_k >= 1; got {self}")
        if (self.replay_batch_size is not None and self.replay_batch_size < 1) or (
            self.mlm_top_k is not None and self.mlm_top_k < 1
        ):
            raise ValueError(f"DER++ replay_batch_size and mlm_top_k must be >= 1 when set; got {self}")


class _OptionsReplay:
    """DER++ records for options tasks: an example and its format's option scores."""

    def __init__(self, fmt: Any) -> None:
        self.fmt = fmt
        if not (hasattr(fmt, "_scores") or hasattr(fmt, "_prompt_ids")):
            raise ValueError(f"DER++ cannot score options with the {type(fmt).__name__} format")

    def scores(self, model: nn.Module, examples: list[Example]) -> list[torch.Tensor]:
        """Per example, one score per option (a list: examples may have different option counts)."""
        if hasattr(self.fmt, "_scores"):  # encoder: cosine similarity to each label, scaled
            scores = self.fmt._scores(model, self.fmt.batch(examples))
            return [row[: len(e.options)] for row, e in zip(scores, examples, strict=True)]
        rows = []  # decoder: summed log-likelihood of each option after the prompt
        for e in examples:
            for option in e.options:
                answer = self.fmt._answer_ids(option, eos=False)
                rows.append((self.fmt._prompt_ids(e, self.fmt.max_length - len(answer)), answer))
        totals = label_log_likelihoods(model, self.fmt._pad(rows, left=False))
        return list(totals.split([len(e.options) for e in examples]))

    @torch.no_grad()
    def snapshot(self, model: nn.Module, examples: list[Example], top_k: int | None) -> Records:
        return [{"example": asdict(e), "values": s.detach().float().half().cpu()}
                for e, s in zip(examples, self.scores(model, examples), strict=True)]  # fmt: skip

    def replay_losses(self, model: nn.Module, logit_records: Records, label_records: Records) -> LossPair:
        mse = ce = None
        if logit_records:
            scores = torch.cat(self.scores(model, [_example(r) for r in logit_records])).float()
            rounded = scores + (scores.half().float() - scores).detach()
            mse = F.mse_loss(rounded, torch.cat([r["values"] for r in logit_records]).to(scores.device).float())
        if label_records:
            examples = [_example(r) for r in label_records]
            gold = [torch.tensor([e.options.index(e.label)]) for e in examples]
            ce = torch.stack([F.cross_entropy(s[None].float(), g.to(s.device))
                              for s, g in zip(self.scores(model, examples), gold, strict=True)]).mean()  # fmt: skip
        return mse, ce


def _example(record: dict[str, Any]) -> Example:
    e = record["example"]
    return Example(**{**e, "options": tuple(e["options"])})


class Derpp(Method):
    name = "derpp"
    stage = "loss"

    def __init__(self, config: DerppConfig | None = None) -> None:
        self.config = config or DerppConfig()
        self.buffer: list[list[dict[str, Any]]] = []  # an item: the records (rows) of one example
        self.seen = 0
        self._stream: list[Any] = []
        self._cursor = 0
        self._rng = random.Random(0)
        self._task = -1

    def _replay(self, ctx: TaskContext) -> Any:
        fmt = ctx.format
        if fmt is None:
            raise ValueError("DER++ needs the task format (TaskContext.format)")
        if isinstance(fmt, Replays):
            return fmt
        return _OptionsReplay(fmt)

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self._start(ctx)
        return model

    def _start(self, ctx: TaskContext) -> None:
        self._task = ctx.index
        self._rng = random.Random(f"derpp:{ctx.seed}:{ctx.index}")
        self._stream = list(ctx.task.train)
        self._rng.shuffle(self._stream)
        self._cursor = 0

    def _next_examples(self, count: int) -> list[Any]:
        out = []
        for _ in range(count):
            if self._cursor == len(self._stream):  # another epoch of the task's stream
                self._rng.shuffle(self._stream)
                self._cursor = 0
            out.append(self._stream[self._cursor])
            self._cursor += 1
        return out

    def _sample(self, count: int) -> list[dict[str, Any]]:
        items = self._rng.sample(range(len(self.buffer)), min(count, len(self.buffer)))
        return [record for i in items for record in self.buffer[i]]

    def extra_loss(self, model: nn.Module, ctx: TaskContext) -> torch.Tensor | None:
        if self._task != ctx.index:
            self._start(ctx)
        replay = self._replay(ctx)
        size = self.config.replay_batch_size or ctx.micro_batch_size
        term = None
        if self.buffer:
            mse, ce = replay.replay_losses(model, self._sample(size), self._sample(size))
            parts = [w * t for w, t in ((self.config.alpha, mse), (self.config.beta, ce)) if t is not None and w]
            term = torch.stack(parts).sum() if parts else None
        self._store(model, replay, self._next_examples(ctx.micro_batch_size))
        return term

    def _store(self, model: nn.Module, replay: Any, examples: list[Any]) -> None:
        """Reservoir sampling: the n-th example offered is kept with probability size / n."""
        slots: list[tuple[int, Any]] = []
        for example in examples:
            self.seen += 1
            if len(self.buffer) + len(slots) < self.config.buffer_size:
                slots.append((len(self.buffer) + len(slots), example))
            else:
                j = self._rng.randrange(self.seen)
                if j < self.config.buffer_size:
                    slots = [s for s in slots if s[0] != j] + [(j, example)]
        if not slots:
            return
        top_k = self.config.mlm_top_k if hasattr(replay, "mask") else self.config.top_k
        was_training = model.training
        model.eval()
        try:
            for slot, example in sorted(slots, key=lambda s: s[0]):
                records = replay.snapshot(model, [example], top_k)
                if slot == len(self.buffer):
                    self.buffer.append(records)
                else:
                    self.buffer[slot] = records
        finally:
            model.train(was_training)

    def after_task(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return {"buffer": len(self.buffer), "seen": self.seen}

    def state_dict(self) -> dict[str, Any]:
        # within a task also the stream of its examples and the generator (a task boundary restarts both)
        stream = {"task": self._task, "stream": self._stream, "cursor": self._cursor, "rng": self._rng.getstate()}
        return {"buffer": self.buffer, "seen": self.seen, **stream}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = list(state.get("buffer", []))
        self.seen = int(state.get("seen", 0))
        if "rng" in state:
            self._task, self._stream, self._cursor = state["task"], list(state["stream"]), state["cursor"]
            self._rng.setstate(state["rng"])


METHODS.register("derpp", Derpp, DerppConfig)
