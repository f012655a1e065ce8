"""The task-sequence protocol: before each task, train, evaluate, save; resumable at task ends
and, for tasks of several epochs, at epoch ends.

``run_sequence`` knows nothing of files (the ``RunStore`` does) nor of how the model, methods and
evaluators were chosen (``runner.run``); it fills one score matrix per score name, in the shape
of ``migu.metrics`` (row 0 before training, row i after task i), following the evaluation
schedule ``data.evaluate_tasks``, and per-epoch learning curves with ``data.evaluate_every=epoch``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from torch import nn
from tqdm.auto import tqdm

from ..data.tasks import Task, TaskSequence
from ..evaluators import EvalContext, Evaluator, KeepsSamples, Samples
from ..methods import TaskContext
from ..methods.compose import MethodStack
from ..train import train_task
from ..train.loop import EpochState
from .config import RunConfig


def say(message: str, is_main: bool = True) -> None:
    """One progress line on stderr (kept apart from tqdm's bars)."""
    if is_main:
        tqdm.write(f"[migu] {message}", file=sys.stderr)


def scheduled(schedule: str, trained: int, tasks: int) -> set[int]:
    """The tasks evaluated after ``trained`` tasks under ``data.evaluate_tasks``."""
    if schedule == "all" or trained == tasks:
        return set(range(tasks))
    if schedule == "seen":
        return set(range(trained))
    return {trained - 1} if trained else set()  # diagonal


def eval_split(task: Task, on: str) -> list[Any]:
    return task.validation if on == "validation" else task.test


@dataclass
class Scoreboard:
    """The score matrices being filled (``{name: rows}``) and what each score is."""

    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, list[list[float | None]]] = field(default_factory=dict)

    def add_row(self, values: dict[str, list[float | None]], specs: dict[str, dict[str, Any]]) -> None:
        """Append one evaluation point; a score first seen now gets empty earlier rows."""
        depth = max((len(r) for r in self.rows.values()), default=0)
        for name, spec in specs.items():
            self.specs.setdefault(name, spec)
            rows = self.rows.setdefault(name, [[None] * len(spec["columns"]) for _ in range(depth)])
            rows.append(values.get(name, [None] * len(spec["columns"])))
        for name, rows in self.rows.items():
            if len(rows) == depth:  # a score not produced at this point (a final-only one)
                rows.append([None] * len(self.specs[name]["columns"]))

    def to_state(self) -> dict[str, Any]:
        return {"specs": self.specs, "rows": self.rows}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scoreboard:
        return cls(dict(state["specs"]), {k: [list(r) for r in v] for k, v in state["rows"].items()})


class Checkpointer(Protocol):
    """What the protocol saves through: the state, the model and the methods at a task end, or
    within a task after an epoch (``epoch``: the training's ``EpochState``; only where
    ``epoch_checkpoints``, off when the optimizer's state is sharded); a task's artifacts; and,
    for a state saved within task ``state["completed"]``, the load of that checkpoint into the
    model built for the task and the methods (returning where training stands; None otherwise)."""

    epoch_checkpoints: bool

    def save(self, state: dict[str, Any], model: nn.Module, epoch: EpochState | None) -> None: ...

    def save_artifacts(self, task_index: int, task: str, method: str, items: dict[str, Any]) -> None: ...

    def resume_in_task(self, model: nn.Module, state: dict[str, Any]) -> EpochState | None: ...


class NoCheckpoints:
    """A ``Checkpointer`` that keeps nothing (evaluation only)."""

    epoch_checkpoints = False

    def save(self, state: dict[str, Any], model: nn.Module, epoch: EpochState | None) -> None:
        return None

    def save_artifacts(self, task_index: int, task: str, method: str, items: dict[str, Any]) -> None:
        return None

    def resume_in_task(self, model: nn.Module, state: dict[str, Any]) -> EpochState | None:
        return None


class Tracker(Protocol):
    """What the protocol logs through (``tracking.RunTracker`` in a run with ``log_with``): each
    optimizer step's values, and each evaluation point once it is in ``state["scores"]`` (with the
    finished task's timing record, or None before training)."""

    def step(self, step: int, values: dict[str, float]) -> None: ...

    def evaluated(self, state: dict[str, Any], trained: dict[str, Any] | None) -> None: ...


Scores = tuple[dict[str, list[float | None]], dict[str, dict[str, Any]]]


class SharedEvaluation(Protocol):
    """Where runs that share their evaluation before training keep it (``eval_cache.EvalCache``):
    ``load`` gives the kept ``(values, specs)`` with what is known of them (``run``, ``seconds``,
    ``samples``: the per-item results, or None), or None (the same answer on every rank); ``save``
    keeps them, with the per-item results when the run kept them (the main process writes)."""

    digest: str

    def load(self) -> tuple[Scores, dict[str, Any]] | None: ...

    def save(self, scores: Scores, seconds: float, samples: Samples | None = None) -> None: ...


@dataclass
class Setting:
    """Everything the protocol runs with (built by ``runner.run``)."""

    config: RunConfig
    sequence: TaskSequence
    methods: MethodStack
    evaluators: list[Evaluator]
    fmt: Any
    accelerator: Any
    eval_context: EvalContext
    checkpointer: Checkpointer = field(default_factory=lambda: NoCheckpoints())
    """Where the protocol saves (``checkpoint.RunCheckpointer`` in a run; nothing in ``migu eval``)."""
    tracker: Tracker | None = None
    """Where the protocol logs as it goes (``log_with``), if anywhere."""
    shared: SharedEvaluation | None = None
    """Where the evaluation before training may already be (runs of a grid share it), if anywhere."""

    @classmethod
    def for_evaluation(cls, config: RunConfig, sequence: TaskSequence, evaluators: list[Evaluator], fmt: Any,
                       accelerator: Any, eval_context: EvalContext) -> Setting:  # fmt: skip
        """A setting that only evaluates (``migu eval``): no methods, nothing saved."""
        return cls(config, sequence, MethodStack([]), evaluators, fmt, accelerator, eval_context, NoCheckpoints())


def evaluate(setting: Setting, model: nn.Module, trained: int, when: str, final: bool,
             samples: Samples | None = None) -> Scores:  # fmt: skip
    """One evaluation point: every evaluator on the scheduled tasks (suites once). ``samples``, when
    given, receives the per-item results of the evaluators that keep them (lm-eval's documents,
    pass@1's problems), under the names of their scores."""
    config, sequence = setting.config, setting.sequence
    wanted = scheduled(config.data.evaluate_tasks, trained, len(sequence))
    values: dict[str, list[float | None]] = {}
    specs: dict[str, dict[str, Any]] = {}
    model = setting.methods.evaluation_model(model)  # (OSF: a merged copy, faster to run)
    for evaluator in setting.evaluators:
        if evaluator.final_only and not final:
            continue
        if samples is None or not isinstance(evaluator, KeepsSamples):
            _evaluate_one(setting, evaluator, model, wanted, when, values, specs)
            continue
        evaluator.samples = {}
        try:
            _evaluate_one(setting, evaluator, model, wanted, when, values, specs)
            for name, by_column in (evaluator.samples or {}).items():
                key = name if evaluator.per_task else f"{evaluator.name}/{name}"
                samples.setdefault(key, {}).update(by_column)
        finally:
            evaluator.samples = None
    return values, specs


def _evaluate_one(setting: Setting, evaluator: Evaluator, model: nn.Module, wanted: Any, when: str,
                  values: dict[str, list[float | None]], specs: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """One evaluator's scores at an evaluation point, into ``values`` and ``specs``."""
    sequence, is_main = setting.sequence, setting.accelerator.is_main_process
    if not evaluator.per_task:
        start = time.perf_counter()
        ctx = _ctx(setting, f"{evaluator.name} ({when})")
        result = evaluator.evaluate(model, setting.fmt, None, ctx)
        directions = {s.name: s.higher_is_better for s in evaluator.specs()}
        for score, by_column in result.items():
            name = f"{evaluator.name}/{score}"
            specs[name] = {"higher_is_better": directions.get(score, True), "columns": list(by_column)}
            values[name] = [float(v) for v in by_column.values()]
        say(f"{evaluator.name} ({when}): " + _brief(result) + f" ({time.perf_counter() - start:.1f} s)", is_main)
        return
    for spec in evaluator.specs():
        specs[spec.name] = {"higher_is_better": spec.higher_is_better, "columns": sequence.names}
        values.setdefault(spec.name, [None] * len(sequence))
    for j, task in enumerate(sequence):
        if j not in wanted:
            continue
        start = time.perf_counter()
        ctx = _ctx(setting, f"{task.name} ({when})", task)
        result = evaluator.evaluate(model, setting.fmt, eval_split(task, setting.config.data.evaluate_on), ctx)
        for score, value in result.items():
            values[score][j] = float(value)
        say(f"eval {task.name} ({when}): {_brief(result)} ({time.perf_counter() - start:.1f} s)", is_main)


def before_training(setting: Setting, model: nn.Module, samples: Samples | None = None
                    ) -> tuple[Scores, dict[str, Any] | None]:  # fmt: skip
    """The evaluation before training: kept by an earlier run that shares it (``setting.shared``;
    its per-item results go into ``samples`` when the run wants them: an entry without them is
    computed again), else computed (and kept for the next); with what the run records of the
    sharing, if any."""
    shared, is_main = setting.shared, setting.accelerator.is_main_process
    if shared is None:
        return evaluate(setting, model, 0, "before training", final=False, samples=samples), None
    found = shared.load()
    if found is not None and (samples is None or found[1].get("samples") is not None):
        (values, specs), about = found
        if samples is not None:
            samples.update(about["samples"])
        say(f"before training: the scores of run {about.get('run') or '?'} (evaluation cache {shared.digest}; "
            f"it took {float(about.get('seconds') or 0):.1f} s there)", is_main)  # fmt: skip
        return (values, specs), {"digest": shared.digest, "hit": True, "run": about.get("run"),
                                 "seconds": about.get("seconds")}  # fmt: skip
    start = time.perf_counter()
    values, specs = evaluate(setting, model, 0, "before training", final=False, samples=samples)
    shared.save((values, specs), time.perf_counter() - start, samples)
    return (values, specs), {"digest": shared.digest, "hit": False}


def _brief(result: dict[str, Any]) -> str:
    parts = []
    for name, value in result.items():
        if isinstance(value, dict):
            value = value.get("mean", next(iter(value.values()), float("nan")))
        parts.append(f"{name} {value:.4g}")
    return ", ".join(parts)


def _ctx(setting: Setting, desc: str, task: Task | None = None) -> EvalContext:
    return replace(setting.eval_context, desc=desc, task=task)


def task_context_for(config: RunConfig, sequence: TaskSequence, index: int, fmt: Any = None) -> TaskContext:
    """What methods may read about task ``index`` (``batch_loss`` needs the format)."""

    def loss(model: nn.Module, examples: list[Any]) -> Any:
        return fmt.loss(model, fmt.batch(examples))

    return TaskContext(index, sequence[index], len(sequence), config.seed, config.train.accumulation_steps,
                       loss if fmt is not None else None, config.train.micro_batch_size, format=fmt)  # fmt: skip


def task_context(setting: Setting, index: int) -> TaskContext:
    return task_context_for(setting.config, setting.sequence, index, setting.fmt)


def run_sequence(setting: Setting, model: nn.Module, state: dict[str, Any],
                 on_task_end: Callable[[int, dict[str, Any]], None] | None = None) -> nn.Module:  # fmt: skip
    """Train the tasks from ``state["completed"]`` on, evaluating and saving after each."""
    config, sequence, methods = setting.config, setting.sequence, setting.methods
    is_main = setting.accelerator.is_main_process
    board = Scoreboard.from_state(state["scores"])
    curves = Scoreboard.from_state(state["curves"]) if "curves" in state else None
    total = len(sequence)
    if not board.rows:  # a new run: the model before any training
        start = time.perf_counter()
        samples = _samples(config)
        (values, specs), shared = before_training(setting, model, samples)
        _keep(state, samples, 0, 0)
        board.add_row(values, specs)
        if curves is not None:
            curves.add_row(values, specs)
            state["curve_points"].append({"task_index": 0, "epoch": 0})
        timing: dict[str, Any] = {"task": None, "eval_seconds": time.perf_counter() - start}
        state["timings"].append({**timing, "eval_cache": shared} if shared else timing)
        state["scores"] = board.to_state()
        if setting.tracker is not None:
            setting.tracker.evaluated(state, None)
    for index in range(state["completed"], total):
        task = sequence[index]
        ctx = task_context(setting, index)
        model = methods.before_task(model, ctx)
        every = methods.rewrites_weights  # (a method that merges updates into frozen weights: keep them all)
        state["trained_parameters"] = sorted(set(state.get("trained_parameters", ())) | {
            n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad or every})  # fmt: skip
        resume = setting.checkpointer.resume_in_task(model, state)  # before train_examples: the methods' state first
        examples = methods.train_examples(task.train, ctx)
        if resume is None:
            say(f"task {index + 1}/{total} {task.name}: training on {len(examples)} examples", is_main)
        else:
            say(f"task {index + 1}/{total} {task.name}: resuming after epoch {resume.epoch}", is_main)

        def epoch_end(epoch: EpochState, index: int = index, model: nn.Module = model, name: str = task.name) -> None:
            if curves is not None:
                values, specs = _kept_point(setting, model, state, index, epoch.epoch, f"{name} epoch {epoch.epoch}",
                                            final=False)  # fmt: skip
                curves.add_row(values, specs)
                state["curve_points"].append({"task_index": index, "epoch": epoch.epoch})
                state["curves"] = curves.to_state()
            if setting.checkpointer.epoch_checkpoints:
                setting.checkpointer.save(state, model, epoch)

        on_step = setting.tracker.step if setting.tracker is not None else None
        trained = train_task(model, setting.fmt, examples, methods, ctx, config.train, setting.accelerator,
                             bool(config.progress), on_epoch_end=epoch_end, resume=resume, on_step=on_step)  # fmt: skip
        if resume is not None:
            trained["resumed_after_epoch"] = resume.epoch
        say(f"task {index + 1}/{total} {task.name}: {trained['steps']} steps in {trained['seconds']:.1f} s, "
            f"mean loss {trained['mean_loss']:.4f}", is_main)  # fmt: skip
        state["diagnostics"].append(methods.after_task(model, ctx))
        for method, items in methods.artifacts(model, ctx).items():
            setting.checkpointer.save_artifacts(index, task.name, method, items)
        start = time.perf_counter()
        final = index + 1 == total
        values, specs = _kept_point(setting, model, state, index, config.train.epochs, f"after {task.name}", final)
        board.add_row(values, specs)
        if curves is not None:
            curves.add_row(values, specs)
            state["curve_points"].append({"task_index": index, "epoch": config.train.epochs})
            state["curves"] = curves.to_state()
        trained.update(task=task.name, eval_seconds=time.perf_counter() - start)
        state["timings"].append(trained)
        state["scores"] = board.to_state()
        if setting.tracker is not None:
            setting.tracker.evaluated(state, trained)
        state["completed"] = index + 1
        setting.checkpointer.save(state, model, None)
        if on_task_end is not None:
            on_task_end(index, state)
    return model


def _samples(config: RunConfig) -> Samples | None:
    """Where an evaluation point's per-item results go (``keep_samples``), or None."""
    return {} if config.keep_samples else None


def _kept_point(setting: Setting, model: nn.Module, state: dict[str, Any], task_index: int, epoch: int, when: str,
                final: bool) -> Scores:  # fmt: skip
    """``evaluate`` after ``epoch`` epochs of task ``task_index``, its per-item results kept."""
    samples = _samples(setting.config)
    scores = evaluate(setting, model, task_index + 1, when, final=final, samples=samples)
    _keep(state, samples, task_index, epoch)
    return scores


def _keep(state: dict[str, Any], samples: Samples | None, task_index: int, epoch: int) -> None:
    """Record an evaluation point's per-item results in the run's state (``results["samples"]``):
    the point as the curves name it (task index, epochs into it; before training: 0, 0)."""
    if samples:
        state.setdefault("samples", []).append({"task_index": task_index, "epoch": epoch, "scores": samples})
