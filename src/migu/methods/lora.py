"""LoRA-based methods on PEFT: one adapter for all tasks (``lora``), a new adapter per task with
the earlier ones frozen and all active (``inc_lora``), and O-LoRA (``olora``): IncLoRA plus a
loss keeping the new adapter's A orthogonal to every earlier A."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.loading import quiet_peft
from .base import METHODS, Method, TaskContext

# the official code adapts the attention query and value projections
DEFAULT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "t5": ["q", "v"],
                   "llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}  # fmt: skip


@dataclass
class LoraMethodConfig:
    """LoRA settings (paper: r = 8, alpha = 32; the official code adapts query and value)."""

    r: int = 8
    """Rank of each adapter's A and B matrices."""
    alpha: int = 32
    """Scale numerator: the adapter's update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input, in [0, 1)."""
    target_modules: list[str] | None = None
    """Module-name suffixes to adapt; by default the query and value projections of the model type."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1); got {self}")


def _targets(model: nn.Module, config: LoraMethodConfig) -> list[str]:
    if config.target_modules:
        return list(config.target_modules)
    kind = getattr(getattr(model, "config", None), "model_type", "")
    if kind not in DEFAULT_TARGETS:
        raise ValueError(f"no default LoRA target modules for model type {kind!r}: set lora.target_modules")
    return DEFAULT_TARGETS[kind]


def _peft_config(model: nn.Module, config: LoraMethodConfig) -> Any:
    from peft import LoraConfig

    kind = getattr(getattr(model, "config", None), "model_type", "")
    return LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=_targets(model, config), fan_in_fan_out=kind == "gpt2")  # fmt: skip


class Lora(Method):
    """One LoRA adapter trained through all tasks; the base model stays frozen."""

    name = "lora"
    stage = "model"
    setup_keeps_function = True  # PEFT starts each adapter's B at zero: its update adds exactly 0

    def __init__(self, config: LoraMethodConfig | None = None) -> None:
        self.config = config or LoraMethodConfig()

    def setup(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        with quiet_peft():
            return get_peft_model(model, _peft_config(model, self.config), adapter_name="task0")


class IncLora(Lora):
    """A new adapter per task; earlier adapters frozen; all adapters active (no task id)."""

    name = "inc_lora"

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        new = f"task{ctx.index}"
        peft_model: Any = model
        if new not in peft_model.peft_config:
            peft_model.add_adapter(new, _peft_config(peft_model.get_base_model(), self.config))
        names = [f"task{i}" for i in range(ctx.index + 1)]
        peft_model.base_model.set_adapter(names)  # activates all, and makes them all trainable
        for name, param in peft_model.named_parameters():
            param.requires_grad = f".{new}." in name and "lora_" in name
        return model


@dataclass
class OLoraConfig(LoraMethodConfig):
    """O-LoRA: lambda1 weighs the orthogonality loss sum |A_new A_old^T| over layers and earlier
    adapters; lambda2 the L2 term: the sum of the Frobenius norms (not squared, as in the O-LoRA
    code) of the new adapter's A and B matrices (the official defaults: 0.5, 0)."""

    lambda1: float = 0.5
    """Weight of the orthogonality loss between the new adapter and the earlier ones."""
    lambda2: float = 0.0
    """Weight of the L2 term on the new adapter's A and B matrices."""


class OLora(IncLora):
    name = "olora"

    def __init__(self, config: OLoraConfig | None = None) -> None:
        super().__init__(config or OLoraConfig())

    def extra_loss(self, model: nn.Module, ctx: TaskContext) -> torch.Tensor | None:
        assert isinstance(self.config, OLoraConfig)
        return olora_loss(model, f"task{ctx.index}", self.config.lambda1, self.config.lambda2)


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def olora_loss(model: nn.Module, new: str, lambda1: float, lambda2: float) -> torch.Tensor | None:
    """lambda1 * sum over layers and earlier adapters of |A_new A_old^T| (L1)
    + lambda2 * sum over layers of (||A_new|| + ||B_new||) (Frobenius norms)."""
    orth, l2, found = None, None, False
    for module in model.modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or new not in lora_a:
            continue
        found = True
        a_new = _weight(lora_a[new])
        for name, old in lora_a.items():
            if name != new:
                term = (a_new @ _weight(old).detach().t()).abs().sum()
                orth = term if orth is None else orth + term
        if lambda2:
            lora_b = getattr(module, "lora_B", None)
            assert isinstance(lora_b, nn.ModuleDict)  # (PEFT builds lora_B beside lora_A)
            norm = a_new.norm() + _weight(lora_b[new]).norm()
            l2 = norm if l2 is None else l2 + norm
    if not found:
        raise ValueError(f"O-LoRA: no LoRA adapter named {new!r} in the model")
    total = None
    if orth is not None and lambda1:
        total = lambda1 * orth
    if l2 is not None:
        total = lambda2 * l2 if total is None else total + lambda2 * l2
    return total


METHODS.register("lora", Lora, LoraMethodConfig, decides_training=True)
METHODS.register("inc_lora", IncLora, LoraMethodConfig, decides_training=True)
METHODS.register("olora", OLora, OLoraConfig, decides_training=True, migu_threshold=0.1)
