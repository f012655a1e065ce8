"""Score a finished run's saved model again (``migu eval RUN_DIR``), with its evaluators or others.

A run with ``save_model: true`` leaves its trained model in ``RUN_DIR/model``. This loads it back
(a full model as a local model folder; a PEFT adapter onto the run's base model, loaded as the run
loaded it) and evaluates it on the run's task sequence as the runner's last evaluation point does,
with the run's config and any ``key=value`` overrides: ``evaluators.lm_eval.limit=500`` scores the
general-ability suite on more documents than the run could afford at every epoch. With the run's
own settings the scores equal those of its results file (``tests/test_eval_saved.py``). ``--base``
scores the model the run started from instead (its base model, without the methods' adapters,
which start as no change), as the run's before-training point did: the other end of a forgetting
measurement made with larger limits.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluators import build_evaluators
from ..models import load_model
from ..models.loading import quiet_peft
from ..train import make_accelerator
from .config import RunConfig, apply_overrides, run_config
from .protocol import Setting, evaluate
from .provenance import versions
from .runner import eval_context_for, format_for, load_tasks
from .store import RESULTS, read_json


def adapter_folders(folder: Path) -> list[Path]:
    """The adapter folders PEFT wrote: the folder itself (adapter "default") or one per adapter."""
    if (folder / "adapter_config.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "adapter_config.json").is_file())


def load_folder(folder: Path, base: str, seed: int, kind: str) -> tuple[nn.Module, Any]:
    """A saved model and its bundle (tokenizer, arch) for a task kind: a model folder as a local
    model, or a folder holding one PEFT adapter loaded on the model ``base`` (a name or a folder)."""
    adapters = adapter_folders(folder)
    if not adapters:
        bundle = load_model(str(folder), seed=seed, kind=kind)
        return bundle.model, bundle
    if len(adapters) > 1:
        raise ValueError(f"{folder} holds {len(adapters)} adapters ({', '.join(p.name for p in adapters)}): "
                         "migu loads a single adapter (lora and its combinations)")  # fmt: skip
    from peft import PeftModel

    bundle = load_model(base, seed=seed, kind=kind)
    name = "default" if adapters[0] == folder else adapters[0].name
    with quiet_peft():
        return PeftModel.from_pretrained(bundle.model, adapters[0], adapter_name=name), bundle


def load_saved(config: RunConfig, folder: Path, kind: str) -> tuple[nn.Module, Any]:
    """A run's saved model and its bundle (an adapter on the run's model, loaded as the run loaded it)."""
    return load_folder(folder, config.model, config.seed, kind)


def evaluate_saved(run_dir: str | Path, overrides: list[str] | None = None, base: bool = False) -> dict[str, Any]:
    """Scores of ``run_dir``'s saved model: ``{"scores": {name: {column: value}}, ...}``; with
    ``base``, of the model the run started from, as its before-training point evaluated it."""
    run_dir = Path(run_dir)
    results_path, folder = run_dir / RESULTS, run_dir / "model"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} does not exist: migu eval scores a finished run")
    if not base and not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: the run kept no model (run it with save_model=true, "
                                "or score its base model with --base)")  # fmt: skip
    results = read_json(results_path, "results file")
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ValueError(f"{results_path} holds no run config: not a migu results file")
    config = run_config(apply_overrides(results["config"], list(overrides or [])))
    config = replace(config, progress=False if config.progress is None else config.progress)
    sequence = load_tasks(config)
    evaluators = build_evaluators(config.evaluators, sequence.kind)
    accelerator = make_accelerator(config.train)
    if accelerator.num_processes > 1:
        raise ValueError("migu eval runs in one process: start it with python or migu, not a distributed launcher")
    if base:  # as the runner loads it (a seeded load: tiny models and any newly drawn head)
        torch.manual_seed(config.seed)
        bundle = load_model(config.model, seed=config.seed, kind=sequence.kind)
        model = bundle.model
    else:
        model, bundle = load_saved(config, folder, sequence.kind)
    model = model.to(accelerator.device).eval()
    fmt = format_for(config, bundle, sequence.kind)
    setting = Setting.for_evaluation(config, sequence, evaluators, fmt, accelerator, eval_context_for(config, bundle))
    start = time.perf_counter()
    trained, when = (0, "base model") if base else (len(sequence), "saved model")
    values, specs = evaluate(setting, model, trained, when, final=not base)
    return {
        "run": str(run_dir),
        "model": "base" if base else "saved",
        "overrides": list(overrides or []),
        "scores": {name: dict(zip(spec["columns"], values[name], strict=True)) for name, spec in specs.items()},
        "higher_is_better": {name: spec["higher_is_better"] for name, spec in specs.items()},
        "evaluators": config.evaluators,
        "seconds": time.perf_counter() - start,
        "versions": versions(),
    }
