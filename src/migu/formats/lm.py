"""Language-modelling formats for ``corpus`` tasks: masked LM for encoders, causal LM for decoders.

Rows. A document is tokenized without truncation and laid out in rows of at most ``max_length``
tokens (special tokens included) by ``layout``:

- ``split`` (default): each document is cut into consecutive rows; nothing is dropped and a row
  never mixes two documents, so a document's rows (and its held-out loss) do not depend on the
  other documents of its batch;
- ``pack``: the batch's documents are concatenated (each closed by the separator / EOS token) and
  cut into full rows: the least padding, but rows depend on how documents are batched;
- ``truncate``: only the first row of each document.

Rows are right-padded to the longest row of the batch; ``attention_mask`` marks the real tokens
and is passed by keyword to the root model call, which is where MIGU reads it with
``ignore_padding=True``: its statistic then covers every real token of the forward (masked and
special tokens included) and no padding.

Masked LM (``MaskedLMFormat``): 15% of the real, non-special tokens are chosen; of those 80% become
the mask token, 10% a random token, 10% stay (BERT). The training mask is drawn from a generator
seeded by one number that ``batch`` draws from torch's global generator, so under the loop's
seeding (``torch.manual_seed`` per task) a run always masks the same way, and ``mask(batch)``
gives the same mask for the same batch (DER++ stores it). ``token_loss`` (held-out loss) uses a
fixed mask per row, seeded by the row's tokens and ``eval_seed``: deterministic, whatever the
batching. The model is the encoder with its MLM head built by ``migu.models.mlm_head``
(``load_model(name, kind="corpus")``), whose forward takes ``positions`` and scores only the
masked positions (the vocabulary projection on every position would cost as much as MiniLM's
encoder). Causal LM (``CausalLMFormat``): next-token loss on every real token after the first,
for any Hugging Face causal LM, its logits computed at the predicting positions only
(``migu.formats.causal``: no vocabulary projection of padding).

Both formats also give what DER++ (``migu.methods.derpp``) stores and replays: ``snapshot``
(rows with the model's logits at the predicted positions, the top-k of each for CLM) and
``replay_losses`` (logit MSE and label cross-entropy on stored rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import TextExample
from ..models.mlm_head import mask_tokens
from .base import Batch, LossPair, Records, register_format
from .causal import label_logits

LAYOUTS = ("split", "pack", "truncate")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _row_seed(row: torch.Tensor, seed: int) -> int:
    digest = hashlib.sha256(str(seed).encode() + row.to(torch.int64).numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _compress(logits: torch.Tensor, top_k: int | None) -> dict[str, torch.Tensor]:
    """Logits [n, vocab] to store: all of them, or the k largest with their ids (float16)."""
    logits = logits.detach().float()
    if top_k is None or top_k >= logits.shape[-1]:
        return {"values": logits.half().cpu()}
    values, indices = logits.topk(top_k, dim=-1)
    return {"values": values.half().cpu(), "indices": indices.cpu()}


def _distill(logits: torch.Tensor, stored: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """MSE between current logits [n, vocab] and the stored ones (rows in the same order). The
    current values are rounded to float16 as stored, with the gradient of the unrounded ones
    (straight through), so the term is 0 for an unchanged model (up to float rounding)."""
    values = torch.cat([s["values"] for s in stored]).to(logits.device, torch.float32)
    if "indices" in stored[0]:
        logits = logits.gather(-1, torch.cat([s["indices"] for s in stored]).to(logits.device))
    logits = logits.float()
    rounded = logits + (logits.half().float() - logits).detach()
    return F.mse_loss(rounded, values)


@dataclass
class _LMFormat:
    tokenizer: Any
    max_length: int = 128
    with_task_name: bool = False
    layout: str = "split"
    """How documents become rows: ``split``, ``pack`` or ``truncate`` (see ``migu.formats.lm``)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"LM layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be at least 4 for language modelling, got {self.max_length}")

    # -- rows ------------------------------------------------------------------------------------
    def _text(self, example: TextExample) -> str:
        if not isinstance(example, TextExample):
            raise ValueError(f"a language-modelling format takes corpus examples, got a {type(example).__name__}")
        return f"{example.task}: {example.text}" if self.with_task_name else example.text

    def _tokens(self, examples: list[TextExample]) -> list[list[int]]:
        texts = [self._text(e) for e in examples]
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def _room(self) -> int:
        raise NotImplementedError

    def _wrap(self, ids: list[int]) -> list[int]:
        raise NotImplementedError

    def _separator(self) -> list[int]:
        raise NotImplementedError

    def rows(self, examples: list[TextExample]) -> list[list[int]]:
        """Token rows of ``examples`` under the layout (special tokens included)."""
        room = self._room()
        docs = [d for d in self._tokens(examples) if d]
        if self.layout == "pack":
            stream = [t for d in docs for t in d + self._separator()]
            pieces = [stream[i : i + room] for i in range(0, len(stream), room)]
        elif self.layout == "truncate":
            pieces = [d[:room] for d in docs]
        else:
            pieces = [d[i : i + room] for d in docs for i in range(0, len(d), room)]
        if not pieces:
            raise ValueError("a batch of corpus examples holds no token (empty texts?)")
        return [self._wrap(p) for p in pieces]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return ids, mask


@dataclass
class MaskedLMFormat(_LMFormat):
    """Masked LM on an encoder with an MLM head (see the module docstring)."""

    mask_probability: float = 0.15
    """Share of the real, non-special tokens chosen for masking, in (0, 1)."""
    eval_seed: int = 1234
    """Seed of the fixed held-out masks (with each row's tokens): the held-out loss is deterministic."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer.mask_token_id is None:
            raise ValueError("masked LM needs a tokenizer with a mask token")
        if not 0 < self.mask_probability < 1:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        full = self.tokenizer("a")["input_ids"]
        bare = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        self._prefix, self._suffix = full[:at], full[at + len(bare) :]  # [CLS] ... [SEP], <s> ... </s>

    def _room(self) -> int:
        return self.max_length - len(self._prefix) - len(self._suffix)

    def _wrap(self, ids: list[int]) -> list[int]:
        return self._prefix + ids + self._suffix

    def _separator(self) -> list[int]:
        return [self.tokenizer.sep_token_id]

    def batch(self, examples: list[TextExample]) -> Batch:
        """Unmasked rows, their real-token and maskable-token masks, and the seed of their mask."""
        rows = self.rows(examples)
        ids, attention = self._pad(rows)
        special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        maskable = ~torch.isin(ids, special) & attention.bool()
        seed = int(torch.randint(0, 2**62, (1,)))
        return {"input_ids": ids, "attention_mask": attention, "maskable": maskable, "seed": seed}

    def mask(self, batch: Batch, fixed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels): the batch's training mask, or with ``fixed`` the evaluation
        mask (one generator per row, seeded by the row's tokens)."""
        args = (self.mask_probability, self.tokenizer.mask_token_id, len(self.tokenizer))
        if not fixed:
            generator = torch.Generator().manual_seed(batch["seed"])
            return mask_tokens(batch["input_ids"], batch["maskable"], *args, generator)
        parts = [mask_tokens(row[None], maskable[None], *args,
                             torch.Generator().manual_seed(_row_seed(row[maskable], self.eval_seed)))
                 for row, maskable in zip(batch["input_ids"], batch["maskable"], strict=True)]  # fmt: skip
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def logits(self, model: nn.Module, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Logits [masked, vocab] at the masked positions (row-major) and their labels."""
        device = _device(model)
        positions = (labels != -100).to(device)
        out = model(input_ids=inputs.to(device), attention_mask=attention.to(device), positions=positions)
        return out, labels.to(device)[positions]

    def _losses(self, model: nn.Module, batch: Batch, fixed: bool) -> torch.Tensor:
        inputs, labels = self.mask(batch, fixed)
        logits, targets = self.logits(model, inputs, batch["attention_mask"], labels)
        return F.cross_entropy(logits.float(), targets, reduction="none")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._losses(model, batch, fixed=False).mean()

    def token_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        losses = self._losses(model, batch, fixed=True)
        return losses.sum(), losses.numel()

    # -- DER++ -----------------------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, model: nn.Module, examples: list[TextExample], top_k: int | None) -> Records:
        """One record per row: masked inputs, labels and the logits of the masked positions."""
        batch = self.batch(examples)
        inputs, labels = self.mask(batch)
        logits, _ = self.logits(model, inputs, batch["attention_mask"], labels)
        counts = (labels != -100).sum(1).tolist()
        out = []
        for row, part in enumerate(logits.split(counts)):
            real = int(batch["attention_mask"][row].sum())
            out.append({"input_ids": inputs[row, :real].clone(), "labels": labels[row, :real].clone(),
                        **_compress(part, top_k)})  # fmt: skip
        return out

    def replay_losses(self, model: nn.Module, logit_records: Records, label_records: Records) -> LossPair:
        """(MSE to the stored logits, cross-entropy on the stored labels), None for an empty list."""
        mse = ce = None
        if logit_records:
            ids, attention, labels = self._collate(logit_records)
            logits, _ = self.logits(model, ids, attention, labels)
            mse = _distill(logits, logit_records)
        if label_records:
            ids, attention, labels = self._collate(label_records)
            logits, targets = self.logits(model, ids, attention, labels)
            ce = F.cross_entropy(logits.float(), targets)
        return mse, ce

    def _collate(self, records: Records) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, attention = self._pad([r["input_ids"].tolist() for r in records])
        labels = torch.full_like(ids, -100)
        for row, r in enumerate(records):
            labels[row, : len(r["labels"])] = r["labels"]
        return ids, attention, labels


@dataclass
class CausalLMFormat(_LMFormat):
    """Causal LM on any Hugging Face causal LM (see the module docstring)."""

    max_length: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer.eos_token_id is None:
            raise ValueError("causal LM needs a tokenizer with an EOS token")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        bos = self.tokenizer.bos_token_id
        probe = self.tokenizer("a")["input_ids"]
        self._bos = [bos] if bos is not None and probe and probe[0] == bos else []

    def _room(self) -> int:
        return self.max_length - len(self._bos) - 1

    def _wrap(self, ids: list[int]) -> list[int]:
        return self._bos + ids + [self.tokenizer.eos_token_id]

    def _separator(self) -> list[int]:
        return []  # pieces of the packed stream get their own EOS

    def batch(self, examples: list[TextExample]) -> Batch:
        ids, attention = self._pad(self.rows(examples))
        return {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(attention == 0, -100)}

    def _losses(self, model: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logits [N, vocab], cross-entropy [N]) of the N predicting positions (every real token
        but each row's last), row-major; the logits are computed there only (``causal``)."""
        logits, targets = label_logits(model, ids, attention, ids.masked_fill(attention == 0, -100))
        return logits, F.cross_entropy(logits.float(), targets, reduction="none")

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self._losses(model, batch["input_ids"], batch["attention_mask"])[1].mean()

    def token_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        losses = self._losses(model, batch["input_ids"], batch["attention_mask"])[1]
        return losses.sum(), losses.numel()

    # -- DER++ -----------------------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self, model: nn.Module, examples: list[TextExample], top_k: int | None) -> Records:
        """One record per row: its tokens and the top-k logits of every predicting position."""
        batch = self.batch(examples)
        logits, _ = self._losses(model, batch["input_ids"], batch["attention_mask"])
        real = batch["attention_mask"].sum(1).tolist()
        out = []
        for row, part in enumerate(logits.split([n - 1 for n in real])):
            out.append({"input_ids": batch["input_ids"][row, : real[row]].clone(), **_compress(part, top_k)})
        return out

    def replay_losses(self, model: nn.Module, logit_records: Records, label_records: Records) -> LossPair:
        mse = ce = None
        if logit_records:
            ids, attention = self._pad([r["input_ids"].tolist() for r in logit_records])
            mse = _distill(self._losses(model, ids, attention)[0], logit_records)
        if label_records:
            ids, attention = self._pad([r["input_ids"].tolist() for r in label_records])
            ce = self._losses(model, ids, attention)[1].mean()
        return mse, ce


def _masked_lm(tokenizer: Any, max_length: int, with_task_name: bool = False, **options: Any) -> MaskedLMFormat:
    return MaskedLMFormat(tokenizer, max_length, with_task_name, **options)


def _causal_lm(tokenizer: Any, max_length: int, with_task_name: bool = False, **options: Any) -> CausalLMFormat:
    options.pop("evaluation", None)  # the runner passes the decoders' answer mode to every decoder format
    return CausalLMFormat(tokenizer, max_length, with_task_name, **options)


register_format("corpus", "encoder", _masked_lm)
register_format("corpus", "decoder", _causal_lm)
