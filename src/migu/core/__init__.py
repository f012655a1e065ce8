"""MIGU itself: magnitude statistics, row selection, gradient/update masking, layer targeting.

This package imports nothing from the rest of migu.
"""

from .config import PRESETS, MiguConfig
from .handle import LayerReport, MiguHandle, attach
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
