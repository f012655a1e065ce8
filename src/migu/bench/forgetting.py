"""Did it forget? ``migu forgetting BEFORE AFTER``: two models scored on one evaluation suite.

BEFORE and AFTER are model names (packaged, a cached hub id), local model folders, or PEFT
adapter folders (``adapter_config.json``, or a run's ``model/`` folder holding one adapter),
loaded on their base model: ``base_model_name_or_path`` of the adapter's config, or
``--adapter-base``. Both are scored as ``migu eval`` scores a run's saved model (the protocol's
``evaluate`` with the suite's evaluators, format and evaluation batch size); the suites are the
evaluators of the instruction-tuning setting (``configs/cpu/instruct_smollm2.yaml``, whose
settings ``INSTRUCT_*`` copy; ``tests/test_forgetting.py`` holds them equal), so a re-scored run
of that benchmark gives ``migu eval``'s numbers.

Standard errors (``STDERR``): of each model's score, lm-eval's own (``mean_stderr``: the sample
standard deviation of the per-document scores over the square root of their number) for lm-eval
tasks, the binomial one for pass@1; of the change, the paired one (the standard deviation of the
per-item differences over the square root of their number: both models answer the same items),
so a model against itself has a change of exactly 0 with a standard error of 0. A mean column's
combines its tasks' as independent: the square root of the sum of squares over the task count.
A held-out loss is token-weighted, not a mean of per-item scores: it has none.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.tasks import TaskSequence
from ..evaluators import EVALUATORS, Evaluator, Samples, build_evaluators
from ..metrics import mean_of_stderrs, paired_stderr
from ..models.loading import TINY, ModelBundle, arch_of, load_model, model_config
from ..train import make_accelerator
from .config import RunConfig, run_config
from .evaluate import adapter_folders, load_folder
from .protocol import Setting, evaluate
from .provenance import versions
from .runner import eval_context_for, format_for, load_tasks
from .store import read_json

INSTRUCT_DATA: dict[str, Any] = {"source": "skills", "kind": "instruction", "order": ["code_mbpp"], "n_train": 200,
                                 "n_test": 50}  # fmt: skip
"""The instruction setting's data: its held-out MBPP problems are what ``pass_at_1`` and ``lm_loss`` score."""
INSTRUCT_TRAIN: dict[str, Any] = {"max_length": 320, "eval_batch_size": 16, "mixed_precision": "no"}
"""The settings of the instruction setting that change its scores (the format's length, the batches)."""
INSTRUCT_EVALUATORS: dict[str, dict[str, Any]] = {
    "lm_loss": {},
    "pass_at_1": {"max_new_tokens": 256, "timeout": 10, "cpu_seconds": 5},
    "humaneval": {"limit": 20, "max_new_tokens": 384, "timeout": 10, "cpu_seconds": 5},
    "lm_eval": {"tasks": ["hellaswag", "winogrande", "arc_challenge", "piqa"], "limit": 50, "num_fewshot": 0},
}
"""The instruction setting's evaluators, as ``configs/cpu/instruct_smollm2.yaml`` sets them."""


@dataclass(frozen=True)
class Suite:
    """A named set of evaluators with their settings, and the line ``--help`` shows for it."""

    name: str
    evaluators: dict[str, dict[str, Any]]
    summary: str = ""

    def settings(self, limit: int | None = None) -> dict[str, dict[str, Any]]:
        """The evaluators' settings; ``limit``: at most that many items per benchmark or task, for
        every evaluator that has a ``limit`` setting."""
        chosen = copy.deepcopy(self.evaluators)
        if limit is not None:
            for name, values in chosen.items():
                config_cls = EVALUATORS.entry(name).config_cls
                if config_cls is not None and "limit" in getattr(config_cls, "__dataclass_fields__", {}):
                    values["limit"] = limit
        return chosen


def _instruct(*names: str) -> dict[str, dict[str, Any]]:
    return {name: INSTRUCT_EVALUATORS[name] for name in names}


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("general", _instruct("lm_eval"), "lm-eval HellaSwag, WinoGrande, ARC-Challenge, PIQA (0-shot, the first "
          "50 documents of each): general abilities"),
    Suite("code", _instruct("pass_at_1", "humaneval"), "pass@1 by execution: 50 held-out MBPP problems (drawn by "
          "--seed), HumanEval's first 20"),
    Suite("instruct", _instruct(*INSTRUCT_EVALUATORS), "every evaluator of the instruction setting (general, code, "
          "held-out MBPP loss), as migu eval"),
)}  # fmt: skip
"""The suites: evaluators of the instruction setting with its settings (``INSTRUCT_EVALUATORS``)."""

STDERR = {
    "lm_eval": "lm-eval's (sample standard deviation of the per-document scores / sqrt(n))",
    "binomial": "binomial (sqrt(p (1 - p) / n))",
    "change": "paired (standard deviation of the per-item differences / sqrt(n): both models answer the same items)",
    "mean": "a mean column's: sqrt(sum of its tasks' squared standard errors) / the task count",
}
_PER_MODEL = {"lm_eval": "lm_eval", "pass_at_1": "binomial", "humaneval": "binomial"}


def suites_help() -> str:
    """One line per suite, for ``migu forgetting --help``."""
    width = max(len(name) for name in SUITES)
    return "suites (--suite):\n" + "\n".join(f"  {s.name:<{width}}  {s.summary}" for s in SUITES.values())


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a name, or a local folder (a model, or an adapter on the model ``base``)."""

    name: str
    folder: Path | None = None
    base: str | None = None


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def resolve_model(name: str, role: str, adapter_base: str | None = None) -> ModelSpec:
    """Check that ``name`` can be loaded as a decoder, without loading its weights; ``role``
    (BEFORE, AFTER) names it in the one-line errors."""
    path = Path(name).expanduser()
    if path.is_dir():
        adapters = adapter_folders(path)
        if len(adapters) > 1:
            raise ValueError(f"{role} {name} holds {len(adapters)} adapters ({', '.join(p.name for p in adapters)}): "
                             "give the folder of one")  # fmt: skip
        if adapters:
            base = adapter_base or _named_base(adapters[0] / "adapter_config.json")
            resolve_model(base, f"{role}'s base model", None)
            return ModelSpec(name, path, base)
        if not (path / "config.json").is_file():
            hint = f"; a run's folder? its model is {path / 'model'}" if (path / "model").is_dir() else ""
            raise FileNotFoundError(f"{role} {name}: a folder with neither config.json (a model) nor "
                                    f"adapter_config.json (a PEFT adapter){hint}")  # fmt: skip
        _require_decoder(arch_of(model_config(str(path))), role, name)
        return ModelSpec(name, path)
    if path.exists():
        raise NotADirectoryError(f"{role} {name}: a file, not a model folder")
    if _looks_local(name):
        raise FileNotFoundError(f"{role} {name}: no such folder")
    if name in TINY:
        _require_decoder(load_model(name).arch, role, name)
        return ModelSpec(name)
    try:
        config = model_config(name)
    except ValueError as err:
        raise ValueError(f"{role}: {err}") from None
    _require_decoder(arch_of(config), role, name)
    return ModelSpec(name)


def _named_base(adapter_config: Path) -> str:
    values = read_json(adapter_config, "adapter config")
    base = values.get("base_model_name_or_path") if isinstance(values, dict) else None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{adapter_config} names no base model (base_model_name_or_path): give it with "
                         "--adapter-base")  # fmt: skip
    return base


def _require_decoder(arch: str, role: str, name: str) -> None:
    if arch != "decoder":
        raise ValueError(f"{role} {name} is an {arch.replace('_', '-')} model: migu forgetting scores causal "
                         "language models (decoders)")  # fmt: skip


def suite_config(suite: Suite, limit: int | None = None, seed: int = 0, model: str = "") -> RunConfig:
    """The run config the suite is scored under (the instruction setting's data, lengths, batches)."""
    return run_config({"model": model or "-", "seed": seed, "data": copy.deepcopy(INSTRUCT_DATA),
                       "train": dict(INSTRUCT_TRAIN), "evaluators": suite.settings(limit),
                       "progress": False})  # fmt: skip


def load(spec: ModelSpec, seed: int = 0, kind: str = "instruction") -> tuple[nn.Module, ModelBundle]:
    """The model and its bundle (tokenizer, arch), as ``migu eval`` loads a run's model (seeded)."""
    torch.manual_seed(seed)
    if spec.folder is None:
        bundle = load_model(spec.name, seed=seed, kind=kind)
        return bundle.model, bundle
    model, bundle = load_folder(spec.folder, spec.base or "", seed, kind)
    return model, bundle


def score(spec: ModelSpec, config: RunConfig, evaluators: list[Evaluator], label: str,
          sequence: TaskSequence | None = None, accelerator: Any = None) -> dict[str, Any]:  # fmt: skip
    """One model's scores under ``config`` (``{"values", "specs", "samples", "seconds"}``): loaded
    and evaluated as ``migu eval`` loads and evaluates a run's saved model."""
    sequence = sequence or load_tasks(config)
    accelerator = accelerator or make_accelerator(config.train)
    model, bundle = load(spec, config.seed, sequence.kind)
    model = model.to(accelerator.device).eval()
    fmt = format_for(config, bundle, sequence.kind)
    setting = Setting.for_evaluation(config, sequence, evaluators, fmt, accelerator, eval_context_for(config, bundle))
    start = time.perf_counter()
    samples: Samples = {}
    values, specs = evaluate(setting, model, len(sequence), label, final=True, samples=samples)
    seconds = time.perf_counter() - start
    del model, setting
    gc.collect()
    return {"values": values, "specs": specs, "samples": samples, "seconds": seconds}


def compare(before: str, after: str, suite: str | Suite = "general", limit: int | None = None, seed: int = 0,
            adapter_base: str | None = None) -> dict[str, Any]:  # fmt: skip
    """BEFORE's and AFTER's scores on ``suite`` (a name of ``SUITES``, or a suite of your own) and
    their changes, with standard errors (see the module docstring); every input is checked before
    anything is loaded or scored."""
    if isinstance(suite, str) and suite not in SUITES:
        raise ValueError(f"--suite: unknown suite {suite!r}; the suites: {', '.join(SUITES)}")
    chosen = SUITES[suite] if isinstance(suite, str) else suite
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1; got {limit}")
    specs = [resolve_model(before, "BEFORE", adapter_base), resolve_model(after, "AFTER", adapter_base)]
    config = suite_config(chosen, limit, seed, before)
    sequence = load_tasks(config)
    evaluators = build_evaluators(config.evaluators, sequence.kind)
    accelerator = make_accelerator(config.train)
    if accelerator.num_processes > 1:
        raise ValueError("migu forgetting runs in one process: start it with python or migu, not a distributed "
                         "launcher")  # fmt: skip
    points = [score(spec, config, evaluators, label, sequence, accelerator)
              for spec, label in zip(specs, ("before", "after"), strict=True)]  # fmt: skip
    per_model = _per_model_stderr(evaluators)
    return {
        "before": _described(specs[0]),
        "after": _described(specs[1]),
        "suite": chosen.name,
        "limit": limit,
        "seed": seed,
        "scores": {name: _rows(name, points, per_model.get(name)) for name in points[1]["specs"]},
        "higher_is_better": {name: spec["higher_is_better"] for name, spec in points[1]["specs"].items()},
        "stderr": {"scores": per_model, "methods": STDERR},
        "evaluators": config.evaluators,
        "data": {key: getattr(config.data, key) for key in INSTRUCT_DATA},
        "seconds": {"before": points[0]["seconds"], "after": points[1]["seconds"]},
        "versions": versions(),
    }  # fmt: skip


def _described(spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"model": spec.name}
    if spec.base is not None:
        out["adapter_on"] = spec.base
    return out


def _per_model_stderr(evaluators: list[Evaluator]) -> dict[str, str]:
    """Score name -> how each model's standard error of it is computed (``STDERR``'s keys)."""
    out = {}
    for evaluator in evaluators:
        kind = _PER_MODEL.get(evaluator.name)
        if kind is not None:
            for spec in evaluator.specs():
                out[spec.name if evaluator.per_task else f"{evaluator.name}/{spec.name}"] = kind
    return out


def stderr_of(items: list[float], kind: str) -> float | None:
    """One model's standard error of the mean of ``items`` (``kind``: lm_eval or binomial)."""
    n = len(items)
    if kind == "binomial" and n >= 1:
        p = sum(items) / n / 100.0
        return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)
    if kind == "lm_eval" and n >= 2:
        from lm_eval.api.metrics import mean_stderr

        return float(mean_stderr(items))
    return None


def _rows(name: str, points: list[dict[str, Any]], kind: str | None) -> dict[str, dict[str, Any]]:
    """Per column: before, after, change, their standard errors and the item count."""
    columns = points[1]["specs"][name]["columns"]
    rows: dict[str, dict[str, Any]] = {}
    for i, column in enumerate(columns):
        b, a = (p["values"].get(name, [None] * len(columns))[i] for p in points)
        items = [p["samples"].get(name, {}).get(column) for p in points]
        row: dict[str, Any] = {"before": b, "after": a, "change": None if a is None or b is None else a - b,
                               "se_before": None, "se_after": None, "se_change": None, "n": None}  # fmt: skip
        if kind is not None and items[0] is not None and items[1] is not None:
            row.update(se_before=stderr_of(items[0], kind), se_after=stderr_of(items[1], kind),
                       se_change=paired_stderr(items[0], items[1]), n=len(items[1]))  # fmt: skip
        rows[column] = row
    if "mean" in rows:  # a suite's mean over its tasks
        parts = [r for c, r in rows.items() if c != "mean"]
        for key in ("se_before", "se_after", "se_change"):
            ses = [r[key] for r in parts]
            rows["mean"][key] = None if any(s is None for s in ses) else mean_of_stderrs(ses)
        counts = [r["n"] for r in parts]
        rows["mean"]["n"] = None if any(c is None for c in counts) else sum(counts)
    return rows


def _cell(value: float | None, se: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.2f}" if sign else f"{value:.2f}"
    return text if se is None else f"{text} ± {se:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of ``compare``'s result, with a note saying which standard errors it shows."""
    head = (f"before: {result['before']['model']}, after: {result['after']['model']}; suite {result['suite']}, "
            f"limit {result['limit'] if result['limit'] is not None else 'the suite default'}")  # fmt: skip
    lines = [head, "", "| score | task | before | after | change | n |", "|---|---|---:|---:|---:|---:|"]
    for name, rows in result["scores"].items():
        label = name if result["higher_is_better"].get(name, True) else f"{name} (lower is better)"
        for column, r in rows.items():
            cells = [_cell(r["before"], r["se_before"]), _cell(r["after"], r["se_after"]),
                     _cell(r["change"], r["se_change"], sign=True), "–" if r["n"] is None else str(r["n"])]  # fmt: skip
            lines.append(f"| {label} | {column} | " + " | ".join(cells) + " |")
    methods, by_kind = result["stderr"]["methods"], result["stderr"]["scores"]
    notes = [f"{', '.join(n for n, k in by_kind.items() if k == kind)}: {methods[kind]}"
             for kind in dict.fromkeys(by_kind.values())]  # fmt: skip
    notes += [f"change: {methods['change']}", f"mean: {methods['mean']}"]
    return "\n".join(lines) + "\n\n± one standard error. " + "; ".join(notes) + "."
