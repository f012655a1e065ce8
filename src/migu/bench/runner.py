"""Run a task sequence end to end: train each task, evaluate every task, write the results.

The only place that knows task orders, checkpoints and result files. State is saved at task
boundaries, so a killed run restarts after its last finished task and ends with the same
numbers as an uninterrupted one (every task's randomness is seeded from the seed and the
task's position).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import metrics
from ..data.bbc import bbc_sequence
from ..data.cl_benchmark import load_sequence
from ..data.tasks import Task, TaskSequence
from ..methods import TaskContext, build_methods
from ..models import load_model
from ..train import accuracy, make_accelerator, make_format, train_task
from .config import RunConfig

RESULTS = "results.json"
LOCK = "run.lock"


class RunInProgress(RuntimeError):
    """Another process is running the same run (same output folder and name)."""


# seeds the draws of methods' before_task, apart from the loop's per-task seed (1000 * seed + index)
STRUCTURE_SEED = 7_000_000


def load_tasks(config: RunConfig) -> TaskSequence:
    data = config.data
    seed = config.seed if data.seed is None else data.seed
    if data.source == "cl_benchmark":
        return load_sequence(data.root, data.order, data.n_train, data.n_test, data.n_validation, seed, data.replace)
    if data.source == "bbc":
        kwargs = {} if isinstance(data.order, str) else {"tasks": [tuple(t) for t in data.order]}
        return bbc_sequence(
            n_train=data.n_train or 200, n_test=data.n_test or 100, n_validation=data.n_validation, seed=seed, **kwargs
        )
    from ..data.hub import load_hub_sequence

    names = data.order if isinstance(data.order, list) else [data.order]
    return load_hub_sequence(names, data.n_train, data.n_test, data.n_validation, seed)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _save_torch(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    import migu

    return {
        "migu": migu.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


# Settings added after results existed: at these values they leave a run's fingerprint as it was,
# so that finished and interrupted runs of earlier versions are still recognised.
_ADDED_LATER: dict[tuple[str | None, str], Any] = {
    ("data", "evaluate_tasks"): "all",
    ("data", "kind"): "options",
    (None, "evaluators"): None,
}


def _fingerprint(config: RunConfig) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in ("progress", "output_dir")}
    for (section, key), value in _ADDED_LATER.items():
        node = settings if section is None else settings[section]
        if key in node and node[key] == value:
            node.pop(key)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _eval_split(task: Task, on: str) -> list:
    return task.validation if on == "validation" else task.test


TaskHook = Callable[[int, dict[str, Any]], None]


def run(config: RunConfig, on_task_end: TaskHook | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished results of) the configured sequence."""
    if config.progress is None:
        config = replace(config, progress=sys.stderr.isatty())
    sequence = load_tasks(config)  # bad data fails here, before anything is written
    methods = build_methods(config.method, config.methods)
    run_dir = Path(config.output_dir) / config.run_name()
    with _exclusive(run_dir):
        return _run(config, on_task_end, sequence, methods, run_dir)


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the whole run, so that two processes never train or write the
    same run (a second one raises ``RunInProgress``). The file is removed once the results are
    written; a killed run leaves it unlocked (the lock dies with its process)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): no protection against a concurrent twin
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunInProgress(f"{run_dir} is being run by another process ({handle.read().strip()})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        yield
        if (run_dir / RESULTS).is_file():
            (run_dir / LOCK).unlink(missing_ok=True)


def _run(config: RunConfig, on_task_end: TaskHook | None, sequence: TaskSequence, methods: list,
         run_dir: Path) -> dict[str, Any]:  # fmt: skip
    state_dir = run_dir / "state"
    fingerprint = _fingerprint(config)
    if (run_dir / RESULTS).is_file():
        done = json.loads((run_dir / RESULTS).read_text())
        if done.get("fingerprint") == fingerprint:
            return done
        raise ValueError(f"{run_dir} holds results of a different config; choose another output_dir or name")
    torch.manual_seed(config.seed)  # pretrained loads are not seeded (weights missing from the files)
    bundle = load_model(config.model, seed=config.seed)
    fmt_options = {"evaluation": config.evaluation} if bundle.arch == "decoder" else {}
    fmt = make_format(bundle.arch, bundle.tokenizer, config.train.max_length, config.data.with_task_name, **fmt_options)
    model = bundle.model
    # methods' setup draws (adapters) whatever loading drew (a first-time conversion, a cache hit)
    torch.manual_seed(config.seed)
    for method in methods:
        model = method.setup(model)
    accelerator = make_accelerator(config.train)
    state = _load_progress(state_dir, fingerprint)
    if state is None:
        state = {
            "fingerprint": fingerprint,
            "completed": 0,
            "rows": [],
            "timings": [],
            "diagnostics": [],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumed_at": [],
        }
        start = time.perf_counter()
        state["rows"].append(_evaluate_all(model, fmt, sequence, config, "before training", trained=0))
        state["timings"].append({"task": None, "eval_seconds": time.perf_counter() - start})
    else:
        state["resumed_at"].append(state["completed"])
        for index in range(state["completed"]):  # rebuild structure (e.g. adapters), then load
            model = _before_task(methods, model, _context(config, sequence, index))
        checkpoint = torch.load(state_dir / state["checkpoint"], weights_only=False)
        if "trained_parameters" not in state:  # a checkpoint of the whole model (older migu)
            state["trained_parameters"] = sorted(checkpoint["model"])
        if state.get("frozen_digest") not in (None, _frozen_digest(model, state)):
            raise ValueError(
                f"{state_dir.parent}: the weights no task trained (loaded again from {config.model!r}) differ "
                "from those of the interrupted run: the model source changed; restore it or delete that folder"
            )
        _load_checkpoint(model, checkpoint["model"], state, state_dir / state["checkpoint"])
        for method, method_state in zip(methods, checkpoint["methods"], strict=True):
            method.load_state_dict(method_state)
    tasks_bar = tqdm(total=len(sequence), initial=state["completed"], desc="tasks", unit="task",
                     disable=not config.progress)  # fmt: skip
    for index in range(state["completed"], len(sequence)):
        task = sequence[index]
        ctx = _context(config, sequence, index, fmt)
        model = _before_task(methods, model, ctx)
        examples = task.train
        for method in methods:
            examples = method.train_examples(examples, ctx)
        state["trained_parameters"] = sorted(set(state.get("trained_parameters", ())) | {
            n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad})  # fmt: skip
        trained = train_task(model, fmt, examples, methods, ctx, config.train, accelerator, config.progress)
        state["diagnostics"].append({m.name: m.after_task(model, ctx) for m in methods})
        start = time.perf_counter()
        state["rows"].append(_evaluate_all(model, fmt, sequence, config, f"after {task.name}", trained=index + 1))
        trained.update(task=task.name, eval_seconds=time.perf_counter() - start)
        state["timings"].append(trained)
        state["completed"] = index + 1
        _save_progress(state_dir, state, model, methods)
        tasks_bar.update(1)
        if on_task_end is not None:
            on_task_end(index, state)
    tasks_bar.close()
    results = {
        "model": config.model,
        "method": "+".join(m.name for m in methods),
        "seed": config.seed,
        "sequence": sequence.names,
        "accuracy_matrix": state["rows"],
        "metrics": metrics.summary(state["rows"]),
        "evaluated_on": config.data.evaluate_on,
        "examples": {
            t.name: {"train": len(t.train), "eval": len(_eval_split(t, config.data.evaluate_on))} for t in sequence
        },
        "timings": state["timings"],
        "diagnostics": state["diagnostics"],
        "config": config.to_dict(),
        "versions": versions(),
        "fingerprint": fingerprint,
        "started": state["started"],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_at": state["resumed_at"],
    }
    write_json(run_dir / RESULTS, results)
    shutil.rmtree(state_dir, ignore_errors=True)
    return results


def _context(config: RunConfig, sequence: TaskSequence, index: int, fmt: Any = None) -> TaskContext:
    loss = (lambda model, examples: fmt.loss(model, fmt.batch(examples))) if fmt is not None else None
    return TaskContext(index, sequence[index], len(sequence), config.seed, config.train.accumulation_steps, loss,
                       config.train.micro_batch_size)  # fmt: skip


def _before_task(methods: list, model: Any, ctx: TaskContext) -> Any:
    # adapters a method adds here (IncLoRA, O-LoRA) start from the same draw whatever ran before
    # in this process (other runs of a sweep, other methods' draws), resumed or not
    torch.manual_seed(STRUCTURE_SEED + 1000 * ctx.seed + ctx.index)
    for method in methods:
        model = method.before_task(model, ctx)
    return model


def _evaluate_all(
    model: Any, fmt: Any, sequence: TaskSequence, config: RunConfig, when: str, trained: int
) -> list[float | None]:
    """One row of the accuracy matrix; tasks that ``data.evaluate_tasks`` skips after ``trained``
    tasks are left ``None``."""
    on = config.data.evaluate_on
    wanted = _scheduled(config.data.evaluate_tasks, trained, len(sequence))
    return [
        accuracy(
            model,
            fmt,
            _eval_split(t, on),
            config.train.eval_batch_size,
            f"{t.name} ({when})",
            config.progress,
            config.train.mixed_precision,
        )
        if j in wanted
        else None
        for j, t in enumerate(sequence)
    ]


def _scheduled(schedule: str, trained: int, tasks: int) -> set[int]:
    """The tasks evaluated after ``trained`` tasks under ``data.evaluate_tasks``."""
    if schedule == "all" or trained == tasks:
        return set(range(tasks))
    if schedule == "seen":
        return set(range(trained))
    return {trained - 1} if trained else set()  # diagonal


def _load_progress(state_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    progress = state_dir / "progress.json"
    if not progress.is_file():
        return None
    state = json.loads(progress.read_text())
    if state.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{state_dir.parent} holds an unfinished run of a different config; "
            "choose another output_dir or name, or delete that folder"
        )
    return state


def _save_progress(state_dir: Path, state: dict[str, Any], model: Any, methods: list) -> None:
    """Checkpoint first, under a name of its own, then the progress that points to it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"after_task{state['completed']}.pt"
    state["frozen_digest"] = _frozen_digest(model, state)
    _save_torch(state_dir / name, {"model": _changed_state(model, state), "methods": [m.state_dict() for m in methods]})
    previous = state.get("checkpoint")
    state["checkpoint"] = name
    write_json(state_dir / "progress.json", state)
    if previous and previous != name:
        (state_dir / previous).unlink(missing_ok=True)


def _changed_state(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The model's state without the parameters no task has trained (a frozen base under LoRA is
    loaded again from its source on resume): an adapter checkpoint, not a copy of the model. The
    resume checks that source against ``_frozen_digest``."""
    trained = set(state.get("trained_parameters", []))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in model.state_dict().items() if k not in params or k in trained}


def _frozen_digest(model: Any, state: dict[str, Any]) -> str:
    """A hash of the parameters left out of checkpoints, to tell on resume that they are the same."""
    trained, digest = set(state.get("trained_parameters", ())), hashlib.sha256()
    for name, param in model.named_parameters():
        if name not in trained:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_checkpoint(model: Any, saved: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint of ``_changed_state``; only never-trained parameters may be missing."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    untrained = params - set(state["trained_parameters"])
    result = model.load_state_dict(saved, strict=False)
    trained_missing = [k for k in result.missing_keys if k not in untrained]
    if result.unexpected_keys or trained_missing:
        raise ValueError(f"{path} does not fit the model rebuilt for resuming: unexpected "
                         f"{result.unexpected_keys[:5]}, missing {trained_missing[:5]}")  # fmt: skip
