"""Continual-learning methods as small plug-ins of the one training loop."""

from .base import METHODS, STAGES, Method, TaskContext
from .finetune import Finetune, FinetuneConfig
from .migu_method import Migu, MiguMethodConfig, RandomUpdate
from .registry import build_methods, canonical_name, parse_spec

__all__ = [
    "METHODS",
    "STAGES",
    "Finetune",
    "FinetuneConfig",
    "Method",
    "Migu",
    "MiguMethodConfig",
    "RandomUpdate",
    "TaskContext",
    "build_methods",
    "canonical_name",
    "parse_spec",
]
