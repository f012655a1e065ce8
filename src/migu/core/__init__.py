"""MIGU itself: magnitude statistics, row selection, gradient/update masking, layer targeting.

This package imports nothing from the rest of migu. Reading order, from the idea to the engine:

1. ``reference``: the algorithm stated plainly (the tests' oracle);
2. ``selection``: which rows a layer keeps, from its statistic (pure functions, the quantile cut);
3. ``statistics``: the per-channel ``|output|`` sums, recorded by forward hooks in one buffer;
4. ``step``: one optimizer step's kept rows, chosen once from the statistic;
5. ``handle`` and ``attach``: ``MiguHandle``, which ties them to a model and an optimizer (masks
   before each step, pauses, reports, removes every hook it added).

Then, as needed: ``targets`` (which layers, and where each statistic is read), ``config``,
``gradmask`` and ``updates`` (grad and update modes), ``fastpath`` (which layers compute weight
gradients of the kept rows only, and how), ``backward`` (masking inside backward), ``sharding``
(FSDP2 row shards), ``runtime`` (the distributed world, the backward in progress), ``report``.
"""

from .attach import attach
from .config import PRESETS, MiguConfig
from .handle import LayerReport, MiguHandle
from .selection import cut_index, magnitude_keep, random_keep
from .targets import find_sources, in_preset, supported_layers

__all__ = [
    "PRESETS",
    "LayerReport",
    "MiguConfig",
    "MiguHandle",
    "attach",
    "cut_index",
    "find_sources",
    "in_preset",
    "magnitude_keep",
    "random_keep",
    "supported_layers",
]
