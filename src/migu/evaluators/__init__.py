"""Evaluators by name: classification (accuracy, macro-F1), lm_loss (loss, perplexity), and the
ones other modules register (``register_evaluator``)."""

# importing registers them: classification, answer_share, embedding_geometry, lm_loss, pass_at_1, lm_eval (lm-eval
# loads on use), end_task (DAS)
from . import answer_share, classification, code_exec, end_task, geometry, lm, lm_eval_suite  # noqa: F401
from .base import (
    DEFAULTS,
    EVALUATORS,
    EvalContext,
    Evaluator,
    KeepsSamples,
    Samples,
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
    "EVALUATORS",
    "EvalContext",
    "Evaluator",
    "KeepsSamples",
    "Samples",
    "ScoreSpec",
    "build_evaluators",
    "check_evaluators",
    "gather",
    "macro_f1",
    "register_evaluator",
    "shard",
]
