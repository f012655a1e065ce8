"""How each kind of model learns and answers a task without task labels.

- encoder (BERT, RoBERTa, MiniLM): the input and each candidate label are embedded by the same
  encoder (mean pooling); the score is the scaled cosine similarity; the loss is cross-entropy
  over the example's own candidates. Only the short label strings are encoded per candidate.
- decoder (Llama, GPT-2, SmolLM2): prompt + answer, loss on the answer tokens only; answered by
  greedy generation and exact match, or by ranking the candidates' log-likelihoods.
- encoder_decoder (T5): prompt -> label text; greedy generation and exact match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.prompts import ANSWER_CUE, render_input, render_prompt
from ..data.tasks import Example
from .base import Batch, register_format, unwrap
from .causal import label_log_likelihoods, label_losses


def normalize_answer(text: str) -> str:
    """Exact match compares answers stripped, lower-cased, up to the first line break."""
    return text.strip().split("\n")[0].strip().lower()


LABEL_MAX_LENGTH = 32
"""Tokens kept of a label string in the encoder format (labels are a few words)."""


@dataclass
class EncoderFormat:
    tokenizer: Any
    max_length: int = 128
    with_task_name: bool = False
    scale: float = 20.0
    """Multiplier of the cosine similarity between input and label embeddings (the logits' scale)."""

    def embed(self, model: nn.Module, texts: list[str], max_length: int) -> torch.Tensor:
        """Unit-length sentence embeddings (mean pooling over the non-padding tokens), float32."""
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(pooled.float(), dim=-1)

    def batch(self, examples: list[Example]) -> Batch:
        labels = sorted({o for e in examples for o in e.options})
        index = {label: i for i, label in enumerate(labels)}
        width = max(len(e.options) for e in examples)
        options = torch.full((len(examples), width), -1, dtype=torch.long)
        for row, e in enumerate(examples):
            options[row, : len(e.options)] = torch.tensor([index[o] for o in e.options])
        target = torch.tensor([e.options.index(e.label) for e in examples])
        texts = [render_input(e, self.with_task_name) for e in examples]
        return {"texts": texts, "labels": labels, "options": options, "target": target}

    def _scores(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        text = self.embed(model, batch["texts"], self.max_length)
        label = self.embed(model, batch["labels"], LABEL_MAX_LENGTH)
        sims = self.scale * text @ label.t()
        options = batch["options"].to(sims.device)
        scores = sims.gather(1, options.clamp(min=0))
        return scores.masked_fill(options < 0, float("-inf"))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        scores = self._scores(model, batch)
        return F.cross_entropy(scores, batch["target"].to(scores.device))

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[Example]) -> list[str]:
        best = self._scores(model, self.batch(examples)).argmax(-1).tolist()
        return [e.options[i] for e, i in zip(examples, best, strict=True)]


@dataclass
class DecoderFormat:
    tokenizer: Any
    max_length: int = 256
    with_task_name: bool = False
    evaluation: Literal["generate", "rank"] = "generate"

    def __post_init__(self) -> None:
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._cue = self.tokenizer("\n" + ANSWER_CUE, add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, example: Example, room: int) -> list[int]:
        ids = self.tokenizer(render_prompt(example, self.with_task_name))["input_ids"]
        if len(ids) > room:  # cut the input text, keep the answer cue
            ids = ids[: max(1, room - len(self._cue))] + self._cue
        return ids

    def _answer_ids(self, label: str, eos: bool = True) -> list[int]:
        ids = self.tokenizer(" " + label, add_special_tokens=False)["input_ids"]
        return ids + ([self.tokenizer.eos_token_id] if eos else [])

    def _pad(self, rows: list[tuple[list[int], list[int]]], left: bool) -> Batch:
        width = max(len(p) + len(a) for p, a in rows)
        pad = self.tokenizer.pad_token_id
        ids, mask, labels = [], [], []
        for prompt, answer in rows:
            seq = prompt + answer
            fill = [pad] * (width - len(seq))
            ids.append(fill + seq if left else seq + fill)
            on = [0] * len(fill)
            mask.append(on + [1] * len(seq) if left else [1] * len(seq) + on)
            lab = [-100] * len(prompt) + answer
            labels.append([-100] * len(fill) + lab if left else lab + [-100] * len(fill))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    def batch(self, examples: list[Example]) -> Batch:
        rows = []
        for e in examples:
            answer = self._answer_ids(e.label)
            rows.append((self._prompt_ids(e, self.max_length - len(answer)), answer))
        return self._pad(rows, left=False)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (logits computed there only: ``causal``)."""
        return label_losses(model, batch).mean()

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[Example]) -> list[str]:
        return self._rank(model, examples) if self.evaluation == "rank" else self._generate(model, examples)

    def _generate(self, model: nn.Module, examples: list[Example]) -> list[str]:
        longest = max(len(self._answer_ids(o, eos=False)) for e in examples for o in e.options)
        rows: list[tuple[list[int], list[int]]] = [(self._prompt_ids(e, self.max_length - longest - 1), [])
                                                   for e in examples]  # fmt: skip
        batch = self._pad(rows, left=True)
        device = next(model.parameters()).device
        out = unwrap(model).generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=longest + 1,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def _rank(self, model: nn.Module, examples: list[Example]) -> list[str]:
        rows, owners = [], []
        for i, e in enumerate(examples):
            for option in e.options:
                answer = self._answer_ids(option, eos=False)
                rows.append((self._prompt_ids(e, self.max_length - len(answer)), answer))
                owners.append((i, option))
        totals = label_log_likelihoods(model, self._pad(rows, left=False)).tolist()
        best: dict[int, tuple[float, str]] = {}
        for (i, option), score in zip(owners, totals, strict=True):
            if i not in best or score > best[i][0]:
                best[i] = (score, option)
        return [best[i][1] for i in range(len(examples))]


@dataclass
class EncoderDecoderFormat:
    tokenizer: Any
    max_length: int = 256
    with_task_name: bool = False

    def batch(self, examples: list[Example]) -> Batch:
        tok = self.tokenizer
        src = tok(
            [render_prompt(e, self.with_task_name) for e in examples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        tgt = tok([e.label for e in examples], padding=True, truncation=True, max_length=32, return_tensors="pt")
        labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
        return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": labels}

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[Example]) -> list[str]:
        batch = self.batch(examples)
        device = next(model.parameters()).device
        longest = int((batch["labels"] >= 0).sum(1).max()) + 1
        out = unwrap(model).generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=longest,
            do_sample=False,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


register_format("options", "encoder", EncoderFormat)
register_format("options", "decoder", DecoderFormat)
register_format("options", "encoder_decoder", EncoderDecoderFormat)
