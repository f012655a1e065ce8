"""Evaluators by name: classification (accuracy, macro-F1), lm_loss (loss, perplexity), and the
ones other modules register (``register_evaluator``)."""

from . import classification, code_exec, lm, lm_eval_suite  # noqa: F401  (register the evaluators; lm-eval: on use)
from . import end_task  # noqa: F401  (DAS end tasks: end_accuracy, end_macro_f1)
from .base import (
    DEFAULTS,
    REGISTRY,
    EvalContext,
    Evaluator,
    ScoreSpec,
    build_evaluators,
    check_evaluators,
    gather,
    register_evaluator,
    shard,
)
from .classification import macro_f1

__all__ = [
    "DEFAULTS",
    "REGISTRY",
    "EvalContext",
    "Evaluator",
    "ScoreSpec",
    "build_evaluators",
    "check_evaluators",
    "gather",
    "macro_f1",
    "register_evaluator",
    "shard",
]
