"""``freeze_bottom``: finetune everything but the bottom ``blocks`` transformer blocks (and the
input embeddings), which stay as pretrained for the whole sequence.

The control of "Spurious Forgetting in Continual Learning of Language Models" (Zheng et al.,
ICLR 2025): much of what looks like forgetting comes from the bottom layers drifting, and
freezing them rivals dedicated methods. The blocks are the model's own repeated layers (the
classes Transformers names in ``_no_split_modules``: ``BertLayer``, ``LlamaDecoderLayer``,
``T5Block``, ...), in module order; a model with several stacks (T5's encoder and decoder) has
the bottom ``blocks`` of each frozen. Tied input embeddings (SmolLM2) freeze the output head too.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import METHODS, Method


@dataclass
class FreezeBottomConfig:
    blocks: int = 1
    """Transformer blocks frozen at the bottom of each stack (chosen on validation data)."""
    embeddings: bool = True
    """Freeze the input embeddings too (the layer below the first block)."""

    def __post_init__(self) -> None:
        if self.blocks < 0:
            raise ValueError(f"blocks must be at least 0, got {self.blocks}")


def transformer_blocks(model: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The model's stacks of transformer blocks, each bottom first: modules whose class is one of
    the model's ``_no_split_modules`` held in a module list, grouped by that list."""
    classes: set[str] = set()
    for module in model.modules():
        classes.update(getattr(module, "_no_split_modules", None) or ())
    lists = {name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)}
    stacks: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0]
        if type(module).__name__ in classes and parent in lists:  # (not a one-off such as BertEmbeddings)
            stacks.setdefault(parent, []).append((name, module))
    if not stacks:
        raise ValueError(f"freeze_bottom: no transformer blocks found in {type(model).__name__} (it needs a "
                         "Transformers model whose _no_split_modules names its block class)")  # fmt: skip
    return list(stacks.values())


class FreezeBottom(Method):
    """Sequential finetuning of every parameter above the frozen bottom."""

    name = "freeze_bottom"
    setup_keeps_function = True  # (it only stops gradients)
    stage = "model"

    def __init__(self, config: FreezeBottomConfig | None = None) -> None:
        self.config = config or FreezeBottomConfig()

    def setup(self, model: nn.Module) -> nn.Module:
        stacks = transformer_blocks(model)
        deepest = min(len(stack) for stack in stacks)
        if self.config.blocks >= deepest:
            raise ValueError(f"methods.freeze_bottom.blocks={self.config.blocks} would freeze every block of a "
                             f"stack of {deepest}; choose fewer")  # fmt: skip
        frozen = [module for stack in stacks for _, module in stack[: self.config.blocks]]
        if self.config.embeddings:
            get = getattr(model, "get_input_embeddings", None)
            embeddings = get() if callable(get) else None
            if embeddings is None:
                raise ValueError("methods.freeze_bottom.embeddings: the model has no get_input_embeddings()")
            frozen.append(embeddings)
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)
        return model


METHODS.register("freeze_bottom", FreezeBottom, FreezeBottomConfig, decides_training=True)
