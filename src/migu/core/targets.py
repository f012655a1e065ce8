"""Which layers MIGU masks, and from which module output each layer's statistic comes.

A *source* is a module whose output gives the per-channel statistic; a *target* is a weight
whose gradient rows are masked by it. Usually a layer is both. Under PEFT LoRA, the A matrix
is masked by its own r-dim output, and B (plus the base weight, if trainable) by the combined
layer output ``xW + scale * xAB`` (paper, section 3.3).

Supported layers: ``torch.nn.Linear``, transformers ``Conv1D`` (GPT-2; weight stored as
[in, out]), PEFT ``lora.Linear``, and any *composite* layer: a module with a ``migu_parts()``
method returning ``(combined, own)``, two lists of ``(suffix, linear)`` pairs; ``combined`` are
masked by the composite's output (their rows must be its output channels), ``own`` by their own
outputs (migu's MoELoRA layer declares its experts' B as combined, their A and the router as own).
transformers and peft are looked up in ``sys.modules`` only: a model cannot hold their layers
unless they are imported, so the core imports neither.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .config import MiguConfig
from .sharding import storage_key

Side = Literal["input", "decoder"]

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_IN_BLOCK = re.compile(r"\.\d+\.")
_CROSS_ATTENTION = re.compile(r"encdecattention|crossattention|cross_attn|encoder_attn", re.IGNORECASE)
_KEY_VALUE = {"k", "v", "key", "value", "k_proj", "v_proj", "k_lin", "v_lin"}


@dataclass(eq=False)
class Target:
    """A weight whose gradient rows (output channels) are masked.

    ``weight`` and ``bias`` are read from the module each time: FSDP2 swaps a module's
    parameters between sharded DTensors (outside forward and backward) and unsharded tensors."""

    name: str
    module: nn.Module
    rows_last: bool = False  # Conv1D keeps output channels in the last weight dimension

    @property
    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.module, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    def rows(self) -> int:
        return self.weight.shape[1] if self.rows_last else self.weight.shape[0]


@dataclass(eq=False)
class Source:
    """A module whose output statistic decides the kept rows of its targets."""

    name: str
    module: nn.Module
    side: Side
    targets: list[Target] = field(default_factory=list)
    low_rank: bool = False  # a LoRA A matrix: r rows, too few for the fast path to skip work

    def rows(self) -> int:
        return self.targets[0].rows()


def shaped(target: Target, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` (one flag per row) shaped to broadcast over the weight."""
    dims = target.weight.dim()
    return keep.view(1, -1) if target.rows_last else keep.view(-1, *([1] * (dims - 1)))


def _conv1d_class() -> Any:
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def _lora_linear_class() -> Any:
    mod = sys.modules.get("peft.tuners.lora.layer")
    return getattr(mod, "Linear", None) if mod is not None else None


def in_preset(name: str, preset: str) -> bool:
    """Whether the module name belongs to a layer preset.

    ``attention``: a dotted part of the name contains ``attn`` or ``attention``.
    ``ffn``: inside a numbered block (``.N.``) and not attention.
    ``all_linear``: every supported layer.
    """
    is_attention = any(_ATTENTION.search(part) for part in name.split("."))
    if preset == "attention":
        return is_attention
    if preset == "ffn":
        return not is_attention and bool(_IN_BLOCK.search(f".{name}."))
    return True


def side_of(name: str) -> Side:
    """``decoder`` for layers on the decoder side of an encoder-decoder model, else ``input``.

    Keys and values of cross-attention read encoder states, so they are on the input side.
    """
    parts = name.split(".")
    if any(_CROSS_ATTENTION.search(p) for p in parts) and parts[-1] in _KEY_VALUE:
        return "input"
    return "decoder" if any(p == "decoder" or p.startswith("decoder_") for p in parts) else "input"


def _tied_output_ids(model: nn.Module) -> set[int]:
    """Ids of the output embedding and of every layer whose weight is an input embedding's."""
    ids: set[int] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            out = get_out()
        except (AttributeError, NotImplementedError):
            out = None
        if isinstance(out, nn.Module):
            ids.add(id(out))
    embedding_keys = {storage_key(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        weight = getattr(m, "weight", None)
        tied = isinstance(weight, nn.Parameter) and storage_key(weight) in embedding_keys
        if tied and not isinstance(m, nn.Embedding):
            ids.add(id(m))
    return ids


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All layers MIGU knows how to mask, in module order; LoRA layers hide their children."""
    conv1d, lora_linear = _conv1d_class(), _lora_linear_class()
    kinds: Any = tuple(k for k in (nn.Linear, conv1d) if k is not None)
    hidden: set[int] = set()
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if id(module) in hidden:
            continue
        if _is_composite(module) or (lora_linear is not None and isinstance(module, lora_linear)):
            hidden.update(id(m) for m in module.modules() if m is not module)
            layers.append((name, module))
        elif isinstance(module, kinds):
            layers.append((name, module))
    return layers


def _is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def _plain_target(name: str, module: Any) -> Target:
    return Target(name, module, rows_last=_is_conv1d(module))


def sources_for(name: str, module: Any) -> list[Source]:
    """The statistic sources of one layer (one for a plain layer, 1 + adapters for LoRA)."""
    lora_linear = _lora_linear_class()
    side = side_of(name)
    if _is_composite(module):
        return _composite_sources(name, module, side)
    if lora_linear is None or not isinstance(module, lora_linear):
        if not module.weight.requires_grad:
            return []
        return [Source(name, module, side, [_plain_target(name, module)])]
    combined = Source(name, module, side)
    base = module.get_base_layer()
    if base.weight.requires_grad:
        combined.targets.append(_plain_target(f"{name}.base_layer", base))
    sources = [combined]
    for adapter, lora_a in module.lora_A.items():
        lora_b = module.lora_B[adapter]
        if lora_a.weight.requires_grad:
            a_name = f"{name}.lora_A.{adapter}"
            sources.append(Source(a_name, lora_a, side, [_plain_target(a_name, lora_a)], low_rank=True))
        if lora_b.weight.requires_grad:
            combined.targets.append(_plain_target(f"{name}.lora_B.{adapter}", lora_b))
    return [s for s in sources if s.targets]


def _is_composite(module: nn.Module) -> bool:
    return callable(getattr(module, "migu_parts", None))


def _composite_sources(name: str, module: Any, side: Side) -> list[Source]:
    combined_parts, own_parts = module.migu_parts()
    modules = [part for _, part in [*combined_parts, *own_parts]]
    if len({id(m) for m in modules}) != len(modules):
        raise ValueError(f"composite layer {name}: migu_parts() lists a module twice (it would be masked twice)")
    rows = {suffix: _plain_target(suffix, part).rows() for suffix, part in combined_parts}
    if len(set(rows.values())) > 1:  # all of them are rows of the composite's output channels
        raise ValueError(f"composite layer {name}: the parts masked by its output differ in rows: {rows}")
    combined = Source(name, module, side)
    sources = [combined]
    for suffix, part in combined_parts:
        if part.weight.requires_grad:
            combined.targets.append(_plain_target(f"{name}.{suffix}", part))
    for suffix, part in own_parts:
        if part.weight.requires_grad:
            sources.append(Source(f"{name}.{suffix}", part, side, [_plain_target(f"{name}.{suffix}", part)]))
    return [s for s in sources if s.targets]


def fast_path_layer(source: Source) -> bool:
    """A plain Linear or Conv1D layer masked by its own output (LoRA layers are not, nor their A
    matrices: with r rows, 2 of 8 kept, there is no work to skip, only the fast path's own cost;
    measured on SmolLM2-135M LoRA, r 8, 16 x 128 tokens, Zen 4 fp32: MIGU / plain 1.05-1.07 with
    them on the fast path, 0.97-1.01 without; ``benchmarks/speed.py --cases smollm2_lora_b16``).

    The fast path recomputes the weight gradient as if the output were ``x W^T + b``: a subclass
    with its own forward (fake quantization, a transformed weight) is left to the reference path."""
    lora_linear = _lora_linear_class()
    if source.low_rank or (lora_linear is not None and isinstance(source.module, lora_linear)):
        return False
    plain_forwards = [nn.Linear.forward]
    conv1d = _conv1d_class()
    if conv1d is not None:
        plain_forwards.append(conv1d.forward)
    if type(source.module).forward not in plain_forwards or hasattr(source.module, "_hf_hook"):
        return False  # (Accelerate's dispatch hook moves the input after MIGU's hook sees it)
    return len(source.targets) == 1 and source.targets[0].module is source.module


def find_sources(model: nn.Module, config: MiguConfig) -> list[Source]:
    """Resolve the config's preset and patterns to statistic sources; explain any mismatch."""
    layers = supported_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no layer MIGU supports (torch.nn.Linear, transformers "
            "Conv1D, PEFT LoRA Linear)"
        )
    tied = set() if config.include_lm_head else _tied_output_ids(model)
    candidates = [(n, m) for n, m in layers if id(m) not in tied and in_preset(n, config.layers)]
    for kind, patterns in (("include", config.include), ("exclude", config.exclude)):
        for pattern in patterns:
            if not any(re.search(pattern, n) for n, _ in candidates):
                raise ValueError(
                    f"{kind} pattern {pattern!r} matches no layer of preset {config.layers!r}; "
                    f"layers are named like {', '.join(n for n, _ in candidates[:4])}"
                )
    chosen = [
        (n, m)
        for n, m in candidates
        if (not config.include or any(re.search(p, n) for p in config.include))
        and not any(re.search(p, n) for p in config.exclude)
    ]
    sources = [s for n, m in chosen for s in sources_for(n, m)]
    partitioned = [t.name for s in sources for t in s.targets if hasattr(t.weight, "ds_shape") and not t.weight.numel()]
    if partitioned:
        raise ValueError(
            f"the weights of {partitioned[0]} and {len(partitioned) - 1} other layer(s) are partitioned by DeepSpeed "
            "ZeRO-3, so MIGU cannot see their rows: attach MIGU before accelerator.prepare / deepspeed.initialize"
        )
    if not sources:
        reason = "after include/exclude" if chosen else f"in preset {config.layers!r}"
        raise ValueError(
            f"{type(model).__name__} has no trainable layer for MIGU {reason}: "
            f"{len(layers)} supported layers found, none selected with a trainable weight"
        )
    return sources
