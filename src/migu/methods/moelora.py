"""MoELoRA: at each adapted layer, as many LoRA experts as tasks and a learned router that mixes
them per token; the base model is frozen and no task id is used at inference. PEFT has no
mixture-of-LoRA-experts layer, so the layer is defined here; the adapted linear layers are
replaced by it in their parent modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import METHODS, Method, TaskContext
from .lora import DEFAULT_TARGETS, LoraMethodConfig


def _is_conv1d(layer: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(layer, Conv1D)


def _features(layer: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear, or of a transformers Conv1D (GPT-2), whose weight is [in, out]."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    fan_in, fan_out = weight.shape
    return fan_in, fan_out


class MoeLoraLinear(nn.Module):
    """base(x) + (alpha / r) * sum_e softmax(router(x))_e * B_e A_e dropout(x); the base is a
    Linear or a transformers Conv1D."""

    def __init__(self, base: nn.Module, experts: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout)
        fan_in, fan_out = _features(base)
        self.router = nn.Linear(fan_in, experts, bias=False)
        downs = [nn.Linear(fan_in, r, bias=False) for _ in range(experts)]
        ups = [nn.Linear(r, fan_out, bias=False) for _ in range(experts)]
        for a, b in zip(downs, ups, strict=True):
            nn.init.kaiming_uniform_(a.weight, a=5**0.5)
            nn.init.zeros_(b.weight)
        self.lora_A, self.lora_B = nn.ModuleList(downs), nn.ModuleList(ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = torch.softmax(self.router(x), dim=-1)
        h = self.dropout(x)
        mixed = sum(
            gates[..., e : e + 1] * b(a(h)) for e, (a, b) in enumerate(zip(self.lora_A, self.lora_B, strict=True))
        )
        return self.base(x) + self.scale * mixed

    def migu_parts(self) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
        """For MIGU, as PEFT LoRA: every expert's B (and the base weight, if trainable) is masked by
        this layer's combined output; every expert's A and the router by their own outputs."""
        combined = [("base", self.base)] + [(f"lora_B.{e}", b) for e, b in enumerate(self.lora_B)]
        own = [("router", self.router)] + [(f"lora_A.{e}", a) for e, a in enumerate(self.lora_A)]
        return combined, own


@dataclass
class MoeLoraConfig(LoraMethodConfig):
    """LoRA settings of every expert, plus their number."""

    experts: int | None = None
    """Number of experts; by default one per task of the sequence."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.experts is not None and self.experts < 1:
            raise ValueError(f"MoELoRA needs at least one expert, got {self.experts}")


class MoeLora(Method):
    name = "moelora"
    stage = "model"
    own_layers = True

    def __init__(self, config: MoeLoraConfig | None = None) -> None:
        self.config = config or MoeLoraConfig()
        self.wrapped = False

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if self.wrapped:
            return model
        kind = getattr(getattr(model, "config", None), "model_type", "")
        suffixes = self.config.target_modules or DEFAULT_TARGETS.get(kind)
        if not suffixes:
            raise ValueError(f"no default MoELoRA target modules for model type {kind!r}: set moelora.target_modules")
        for p in model.parameters():
            p.requires_grad_(False)
        experts = self.config.experts or ctx.num_tasks
        targets = [(n, m) for n, m in model.named_modules()
                   if (isinstance(m, nn.Linear) or _is_conv1d(m)) and n.split(".")[-1] in suffixes]  # fmt: skip
        if not targets:
            raise ValueError(f"MoELoRA: no nn.Linear or Conv1D named {suffixes} in {type(model).__name__}")
        for name, layer in targets:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            wrapped = MoeLoraLinear(layer, experts, self.config.r, self.config.alpha, self.config.dropout)
            setattr(parent, name.rsplit(".", 1)[-1], wrapped.to(layer.weight.device))
        self.wrapped = True
        return model


METHODS.register("moelora", MoeLora, MoeLoraConfig, decides_training=True)
