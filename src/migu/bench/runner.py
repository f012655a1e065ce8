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

import hashlib
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType

from .. import metrics
from ..data import load_source
from ..data.tasks import TaskSequence
from ..evaluators import EvalContext, build_evaluators
from ..formats import make_format
from ..methods import build_methods
from ..methods.compose import MethodStack
from ..methods.registry import method_settings
from ..models import load_model
from ..train import make_accelerator
from ..train.loop import EpochState, set_dropout
from ..train.sharding import migu_shards, shard_model
from .config import RunConfig
from .protocol import Setting, eval_split, run_sequence, say, task_context_for
from .provenance import cpu_name, source_revision, versions
from .store import RESULTS, RunInProgress, RunStore, write_json

__all__ = ["RESULTS", "RunInProgress", "load_tasks", "run", "write_json"]


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


# Settings added after results existed: at these values they leave a run's fingerprint as it was,
# so that finished and interrupted runs of earlier versions are still recognised.
_ADDED_LATER: dict[tuple[str | None, str], Any] = {
    ("data", "evaluate_tasks"): "all",
    ("data", "kind"): "options",
    ("data", "evaluate_every"): "task",
    ("train", "dropout"): None,
    ("train", "optim"): "adamw_torch",
    ("data", "names_in_input"): False,
    (None, "protocol"): None,
    (None, "evaluators"): None,
    (None, "format"): {},
}


def config_fingerprint(config: RunConfig, with_data_root: bool = False) -> str:
    """What identifies a run's results: a hash of its config without the keys that do not change
    them (progress bars, output folder, keeping the model, and where the data was read from: the
    data itself is identified by ``TaskSequence.digest``, so a run resumes with its data moved).
    ``with_data_root``: the fingerprint of runs before 2026-12-02, which hashed ``data.root``."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("progress", "output_dir", "save_model")}
    for (section, key), value in _ADDED_LATER.items():
        node = settings if section is None else settings[section]
        if key in node and node[key] == value:
            node.pop(key)
    if not with_data_root:
        settings["data"].pop("root", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint_matches(saved: dict[str, Any], config: RunConfig) -> bool:
    """Whether a saved state or results file is a run of ``config`` (either fingerprint form)."""
    return saved.get("fingerprint") in (config_fingerprint(config), config_fingerprint(config, with_data_root=True))


def _same_data(saved: dict[str, Any], digest: str, where: Path) -> None:
    """Refuse a run folder whose saved run read other data (files from before 2026-12-02 have no
    digest: their fingerprint holds ``data.root``)."""
    if saved.get("data_digest") not in (None, digest):
        raise ValueError(f"{where} holds a run on other data (data.root or the files in it changed); "
                         "choose another output_dir or name, or delete that folder")  # fmt: skip


TaskHook = Callable[[int, dict[str, Any]], None]


def run(config: RunConfig, on_task_end: TaskHook | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished results of) the configured sequence."""
    if config.progress is None:
        config = replace(config, progress=sys.stderr.isatty())
    sequence = load_tasks(config)  # bad data fails here, before anything is written
    methods = MethodStack(build_methods(config.method, config.methods))
    methods.check_sequence(len(sequence))  # (before anything is written, as bad data)
    evaluators = build_evaluators(config.evaluators, sequence.kind)
    accelerator = make_accelerator(config.train)
    _same_data_on_every_rank(sequence.digest(), accelerator)
    if config.save_model:
        methods.check_save_model()
    if config.save_model and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError("save_model: not available when Accelerate shards the model (FSDP on GPUs, DeepSpeed); "
                         "one process, DDP and migu's FSDP2 on CPU save it")  # fmt: skip
    store = RunStore(Path(config.output_dir) / config.run_name(), accelerator.is_main_process)
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
            _same_data(done, sequence.digest(), store.dir)
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

    def save(state: dict[str, Any], model: torch.nn.Module, epoch: EpochState | None) -> None:
        full = full_state_dict(model)  # every rank takes part (FSDP gathers); rank 0 gets the tensors
        if not accelerator.is_main_process:
            return
        state["frozen_digest"] = _frozen_digest(model, state, full)
        payload = {"model": _changed_state(model, state, full), "methods": methods.state_dict()}
        if epoch is None:
            state.pop("in_task", None)
            name = f"after_task{state['completed']}.pt"
        else:  # within task `completed` (0-based): its weights, methods and optimizer after `epoch`
            state["in_task"] = {"epoch": epoch.epoch}
            payload["epoch"] = epoch.to_dict()
            name = f"task{state['completed'] + 1}_epoch{epoch.epoch}.pt"
        store.save_progress(state, payload, name)

    def resume_in_task(model: torch.nn.Module, state: dict[str, Any]) -> EpochState | None:
        if "in_task" not in state:
            return None
        checkpoint = _load_into(store, model, methods, state)  # the task's before_task has just run
        del state["in_task"]  # (on disk until the next save)
        return EpochState(**checkpoint["epoch"])

    # FSDP and DeepSpeed shard the optimizer's state: there a run resumes at task ends only
    unsharded = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    epoch_checkpoints = accelerator.distributed_type in unsharded and not migu_shards(accelerator)
    setting = Setting(config, sequence, methods, evaluators, fmt, accelerator, eval_context, save,
                      store.save_artifacts, resume_in_task, epoch_checkpoints)  # fmt: skip
    model = run_sequence(setting, model, state, on_task_end)
    if config.save_model:  # before results.json: a finished run has its model
        full = full_state_dict(model) if migu_shards(accelerator) else None  # (a collective)
        saved = store.save_model(model, bundle.tokenizer, full)
        say(f"{store.dir.name}: model saved to {saved}", is_main)
    results = _results(config, sequence, methods, state, fingerprint, store)
    store.write_results(results)
    return results


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
    _same_data(state, digest, store.dir)
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
        _load_into(store, model, methods, state)
    state["_model"] = model
    return state


def _load_into(store: RunStore, model: torch.nn.Module, methods: MethodStack, state: dict[str, Any]) -> Any:
    """Load the state's checkpoint into the rebuilt model and the methods; returns the checkpoint."""
    checkpoint = store.load_checkpoint(state["checkpoint"])
    if "trained_parameters" not in state:  # a checkpoint of the whole model (older migu)
        state["trained_parameters"] = sorted(checkpoint["model"])
    if state.get("frozen_digest") not in (None, _frozen_digest(model, state)):
        raise ValueError(
            f"{store.dir}: the weights no task trained (loaded again from the model's source) differ "
            "from those of the interrupted run: the model source changed; restore it or delete that folder"
        )
    _load_checkpoint(model, checkpoint["model"], state, store.state_dir / state["checkpoint"])
    methods.load_state_dict(checkpoint["methods"])
    return checkpoint


def _results(config: RunConfig, sequence: TaskSequence, methods: MethodStack, state: dict[str, Any],
             fingerprint: str, store: RunStore) -> dict[str, Any]:  # fmt: skip
    scores = state["scores"]
    matrices = {name: {**spec, "matrix": scores["rows"][name]} for name, spec in scores["specs"].items()}
    per_task = {n: m for n, m in matrices.items() if m["columns"] == sequence.names and "/" not in n}
    summaries = {n: _summary(m) for n, m in per_task.items()}
    headline = "accuracy" if "accuracy" in summaries else next(iter(summaries), None)
    results: dict[str, Any] = {
        "model": config.model,
        "method": methods.name,
        "seed": config.seed,
        "sequence": sequence.names,
        "kind": sequence.kind,
    }
    if "accuracy" in matrices:
        results["accuracy_matrix"] = matrices["accuracy"]["matrix"]
    results.update({
        "metrics": summaries.get(headline) if headline else None,
        "score_matrices": matrices,
        "score_metrics": summaries,
        "evaluated_on": config.data.evaluate_on,
        "examples": {t.name: {"train": len(t.train), "eval": len(eval_split(t, config.data.evaluate_on))}
                     for t in sequence},
        "timings": state["timings"],
        "diagnostics": state["diagnostics"],
        "artifacts": store.artifact_index(),
        "config": config.to_dict(),  # as given: what the fingerprint hashes
        # what each method ran with, defaults included (MIGU's threshold for the combination)
        "method_settings": json.loads(json.dumps(method_settings(list(methods)), default=str)),
        "versions": versions(),
        "fingerprint": fingerprint,
        "data_digest": state.get("data_digest"),
        "started": state["started"],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_at": state["resumed_at"],
        "code": state.get("code", []),
    })  # fmt: skip
    if "curves" in state:
        curves = state["curves"]
        results["curves"] = {
            "points": state["curve_points"],
            "scores": {n: {**spec, "values": curves["rows"][n]} for n, spec in curves["specs"].items()},
        }
    return results


def _summary(matrix: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return metrics.summary(matrix["matrix"], matrix["higher_is_better"])
    except ValueError:  # a score only some rows have (e.g. a final-only end task): no CL metrics
        return None


def full_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The model's whole state as plain tensors: under FSDP2 (sharded DTensor weights) gathered to
    CPU on rank 0 (a collective: every rank calls it; the others get an empty dict)."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _changed_state(model: Any, state: dict[str, Any], full: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's state (``full``, by default ``model.state_dict()``) without the parameters no
    task has trained (a frozen base under LoRA is loaded again from its source on resume): an
    adapter checkpoint, not a copy of the model. The resume checks that source against
    ``_frozen_digest``."""
    trained = set(state.get("trained_parameters", []))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    full = model.state_dict() if full is None else full
    return {k: v for k, v in full.items() if k not in params or k in trained}


def _frozen_digest(model: Any, state: dict[str, Any], full: dict[str, Any] | None = None) -> str:
    """A hash of the parameters left out of checkpoints, to tell on resume that they are the same."""
    trained, digest = set(state.get("trained_parameters", ())), hashlib.sha256()
    values = dict(model.named_parameters()) if full is None else full
    for name, _ in model.named_parameters():
        if name not in trained:
            digest.update(name.encode())
            digest.update(values[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
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
