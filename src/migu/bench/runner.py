"""Run a task sequence end to end: build it from a config, run the protocol, write the results.

The only place that turns a config into objects (tasks from a data source, the model, the
composed methods, the evaluators, the format) and a finished protocol into results.json. The run
folder is a ``RunStore``; the task loop is ``protocol.run_sequence``. State is saved at task
boundaries and, in tasks of several epochs, at epoch ends (with the optimizer's state; not where
that state is sharded: FSDP, DeepSpeed), so a killed run restarts after its last finished task or
epoch and ends with the same numbers as an uninterrupted one (every task's and epoch's randomness
is seeded from the seed and its position).

Several processes (``accelerate launch`` or ``torchrun``): every rank runs this same code; each
trains on its slice of every batch, MIGU's statistic is summed over ranks, evaluation is sharded
and gathered, and only rank 0 writes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from ..data import load_source
from ..data.tasks import TaskSequence
from ..evaluators import EvalContext, build_evaluators
from ..formats import make_format
from ..methods import build_methods
from ..methods.compose import MethodStack
from ..models import load_model
from ..train import make_accelerator
from ..train.loop import set_dropout
from ..train.sharding import migu_shards, shard_model
from .checkpoint import RunCheckpointer, full_state_dict, load_into
from .config import RunConfig
from .eval_cache import FOLDER as EVAL_CACHE
from .eval_cache import EvalCache, before_training_key
from .fingerprint import config_fingerprint, fingerprint_matches, same_data
from .protocol import Setting, run_sequence, say, task_context_for
from .provenance import cpu_name, source_revision, versions
from .results import results_record
from .store import RESULTS, RunInProgress, RunStore, write_json
from .tracking import RunTracker, check_log_with, logs_dir

__all__ = ["RESULTS", "RunInProgress", "config_fingerprint", "fingerprint_matches", "load_tasks", "run", "write_json"]


def load_tasks(config: RunConfig) -> TaskSequence:
    """The run's task sequence from its data source (``data.source``)."""
    return load_source(config.data, config.seed if config.data.seed is None else config.data.seed)


def format_for(config: RunConfig, bundle: Any, kind: str) -> Any:
    """The run's task format for the loaded model (``bundle``) and the data's task kind."""
    options = {"evaluation": config.evaluation} if bundle.arch == "decoder" and kind == "options" else {}
    options.update(config.format)
    return make_format(bundle.arch, bundle.tokenizer, config.train.max_length, config.data.with_task_name,
                       kind=kind, **options)  # fmt: skip


def eval_context_for(config: RunConfig, bundle: Any, rank: int = 0, world: int = 1) -> EvalContext:
    """What the run's evaluators are given besides the model (batch size, precision, tokenizer)."""
    return EvalContext(config.train.eval_batch_size, config.train.mixed_precision, bool(config.progress),
                       "", bundle.tokenizer, bundle.arch, rank, world)  # fmt: skip


TaskHook = Callable[[int, dict[str, Any]], None]


def run(config: RunConfig, on_task_end: TaskHook | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished results of) the configured sequence."""
    if config.progress is None:
        config = replace(config, progress=sys.stderr.isatty())
    sequence = load_tasks(config)  # bad data fails here, before anything is written
    methods = MethodStack(build_methods(config.method, config.methods))
    methods.check_sequence(len(sequence))  # (before anything is written, as bad data)
    evaluators = build_evaluators(config.evaluators, sequence.kind)
    log_with = check_log_with(config.log_with)  # (an uninstalled tracker: before anything is written)
    run_dir = Path(config.output_dir) / config.run_name()
    accelerator = make_accelerator(config.train, log_with, logs_dir(run_dir))
    _same_data_on_every_rank(sequence.digest(), accelerator)
    if config.save_model:
        methods.check_save_model()
    if config.save_model and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError("save_model: not available when Accelerate shards the model (FSDP on GPUs, DeepSpeed); "
                         "one process, DDP and migu's FSDP2 on CPU save it")  # fmt: skip
    store = RunStore(run_dir, accelerator.is_main_process)
    with ExitStack() as stack:
        error = None
        try:
            stack.enter_context(store.exclusive())
        except RunInProgress as err:
            error = str(err)
        error = _from_main(error, accelerator)
        if error is not None:
            raise RunInProgress(error)
        return _run(config, on_task_end, sequence, methods, evaluators, accelerator, store)


def _same_data_on_every_rank(digest: str, accelerator: Any) -> None:
    """Refuse, on every rank at once, a run whose ranks read different examples (nodes holding
    other files at the same ``data.root``); otherwise those ranks alone would refuse a resume, or
    the run would train and score each rank on other data."""
    if accelerator.num_processes == 1:
        return
    digests: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(digests, digest)
    other = [rank for rank, theirs in enumerate(digests) if theirs != digests[0]]
    if other:
        raise ValueError(f"data.root: process(es) {', '.join(map(str, other))} read other examples than "
                         "process 0; every node needs the same files there")  # fmt: skip


def _from_main(value: Any, accelerator: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _run(config: RunConfig, on_task_end: TaskHook | None, sequence: TaskSequence, methods: MethodStack,
         evaluators: list, accelerator: Any, store: RunStore) -> dict[str, Any]:  # fmt: skip
    fingerprint = config_fingerprint(config)
    is_main = accelerator.is_main_process
    done = store.finished()
    if done is not None:
        if fingerprint_matches(done, config):
            same_data(done, sequence.digest(), store.dir)
            say(f"{store.dir.name}: finished already; reloaded {store.dir / RESULTS}", is_main)
            if config.save_model and not (store.dir / "model").is_dir():
                say(f"{store.dir.name}: finished without save_model, so it kept no model; rerun it under "
                    "another name (or output_dir) to keep one", is_main)  # fmt: skip
            return done
        raise ValueError(f"{store.dir} holds results of a different config; choose another output_dir or name")
    torch.manual_seed(config.seed)  # pretrained loads are not seeded (weights missing from the files)
    bundle = load_model(config.model, seed=config.seed, kind=sequence.kind)
    if config.train.dropout is not None:
        set_dropout(bundle.model, config.train.dropout)
    fmt = format_for(config, bundle, sequence.kind)
    # methods' setup draws (adapters) whatever loading drew (a first-time conversion, a cache hit)
    torch.manual_seed(config.seed)
    model = methods.setup(bundle.model)
    state = _resume(store, config, sequence, methods, model)
    if state is None:
        state = _new_state(fingerprint, config)
        state["data_digest"] = sequence.digest()
        say(f"{store.dir.name}: {len(sequence)} tasks ({', '.join(sequence.names)})", is_main)
    else:
        model = state.pop("_model")
        say(f"{store.dir.name}: resuming after task {state['completed']} of {len(sequence)}", is_main)
    # which code trained which tasks on which CPU (a resumed run may change both; older states lack them)
    state.setdefault("code", []).append({"from_task": state["completed"] + 1, "source": source_revision(),
                                         "migu": versions()["migu"], "cpu": cpu_name()})  # fmt: skip
    if migu_shards(accelerator):  # after a resume has loaded the unsharded weights
        model = shard_model(model)
    # evaluation is sharded over ranks, except under FSDP, where every forward is a collective
    # (ranks with different numbers of batches would wait for each other forever): there every
    # rank evaluates every example
    sharded = accelerator.distributed_type != DistributedType.FSDP and not migu_shards(accelerator)
    rank, world = (accelerator.process_index, accelerator.num_processes) if sharded else (0, 1)
    eval_context = eval_context_for(config, bundle, rank, world)
    checkpointer = RunCheckpointer(store, methods, accelerator)
    tracker = None
    if config.log_with:
        steps_before = sum(int(t.get("steps", 0)) for t in state["timings"] if t.get("task") is not None)
        tracker = RunTracker(accelerator, store.dir.name, config.to_dict(), sequence.names, steps_before)
    shared = _shared_evaluation(config, sequence, methods, accelerator, store) if not state["scores"]["rows"] else None
    setting = Setting(config, sequence, methods, evaluators, fmt, accelerator, eval_context, checkpointer, tracker,
                      shared)  # fmt: skip
    try:
        model = run_sequence(setting, model, state, on_task_end)
    finally:  # (trackers flush and close on every way out: a signal, an error)
        if tracker is not None:
            tracker.finish()
    if config.save_model:  # before results.json: a finished run has its model
        full = full_state_dict(model) if migu_shards(accelerator) else None  # (a collective)
        saved = store.save_model(model, bundle.tokenizer, full)
        say(f"{store.dir.name}: model saved to {saved}", is_main)
    results = results_record(config, sequence, methods, state, fingerprint, store)
    store.write_results(results)
    return results


def _shared_evaluation(config: RunConfig, sequence: TaskSequence, methods: MethodStack, accelerator: Any,
                       store: RunStore) -> EvalCache | None:  # fmt: skip
    """The evaluation cache of this run's evaluation before training (``eval_cache``), shared with
    the runs of ``output_dir`` that have the same key; None where the model's files are unknown."""
    key = before_training_key(config, sequence, methods, accelerator)
    if key is None:
        return None
    return EvalCache(Path(config.output_dir) / EVAL_CACHE, key, accelerator, store.dir.name)


def _new_state(fingerprint: str, config: RunConfig) -> dict[str, Any]:
    state: dict[str, Any] = {
        "fingerprint": fingerprint,
        "completed": 0,
        "scores": {"specs": {}, "rows": {}},
        "timings": [],
        "diagnostics": [],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_at": [],
    }
    if config.data.evaluate_every == "epoch":
        state["curves"] = {"specs": {}, "rows": {}}
        state["curve_points"] = []
    return state


def _resume(store: RunStore, config: RunConfig, sequence: TaskSequence, methods: MethodStack,
            model: torch.nn.Module) -> dict[str, Any] | None:  # fmt: skip
    """The saved state of an interrupted run (its model rebuilt and loaded under ``_model``)."""
    state = store.load_progress()
    if state is None:
        return None
    if not fingerprint_matches(state, config):
        raise ValueError(f"{store.dir} holds an unfinished run of a different config; "
                         "choose another output_dir or name, or delete that folder")  # fmt: skip
    digest = sequence.digest()
    same_data(state, digest, store.dir)
    # an older state (its fingerprint held data.root): from now on identified as a new one, so that
    # it, too, can move with its data
    state["data_digest"], state["fingerprint"] = digest, config_fingerprint(config)
    if "scores" not in state:  # the state of an older migu: one accuracy matrix
        columns = sequence.names
        state["scores"] = {"specs": {"accuracy": {"higher_is_better": True, "columns": columns}},
                           "rows": {"accuracy": state.pop("rows")}}  # fmt: skip
    state["resumed_at"].append(state["completed"])  # (within a task: its timing says after which epoch)
    for index in range(state["completed"]):  # rebuild structure (e.g. adapters), then load
        model = methods.before_task(model, task_context_for(config, sequence, index))
    if "in_task" not in state:  # (within a task: loaded once that task's before_task has run)
        load_into(store, model, methods, state)
    state["_model"] = model
    return state
