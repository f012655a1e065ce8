"""The end tasks of a continual pre-training config scored on the model before any pre-training:
the reference that tells whether pre-training on the domains helped the end tasks at all (the
DAS papers' "non-DAP" row).

    python benchmarks/cpt_reference.py configs/cpu/cpt_minilm.yaml --out benchmarks/results/cpt_minilm/reference.json

The model, the data and the ``end_task`` settings are the config's; each domain's end task is
learned by a copy of the untouched model exactly as the ``end_task`` evaluator does after the
last domain of a run (same seeds, examples and settings).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from migu.bench import apply_overrides, load_yaml, run_config
from migu.data import load_source
from migu.evaluators import EvalContext
from migu.evaluators.end_task import EndTask, EndTaskConfig
from migu.models import load_model
from migu.report.domains import end_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a continual pre-training config (corpus tasks with end tasks)")
    parser.add_argument("overrides", nargs="*", help="key=value, as for migu run")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    raw = apply_overrides(load_yaml(args.config), args.overrides)
    raw["method"], raw["seed"] = "finetune", raw.get("seed", 0)  # nothing is trained: one model, as given
    config = run_config(raw)
    settings = config.evaluators.get("end_task") if isinstance(config.evaluators, dict) else None
    if settings is None:
        parser.error(f"{args.config}: evaluators has no end_task section")
    torch.manual_seed(config.seed)
    bundle = load_model(config.model, seed=config.seed, kind="corpus")
    sequence = load_source(config.data, config.seed)
    evaluator = EndTask(EndTaskConfig(**settings))
    scores, seconds = {}, {}
    for task in sequence.tasks:
        start = time.perf_counter()
        ctx = EvalContext(batch_size=config.train.eval_batch_size, tokenizer=bundle.tokenizer, arch=bundle.arch,
                          task=task, desc=task.name)  # fmt: skip
        scores[task.name] = evaluator.evaluate(bundle.model, None, task.test, ctx)
        seconds[task.name] = time.perf_counter() - start
        print(task.name, scores[task.name], f"({seconds[task.name]:.1f} s)", flush=True)
    summary = end_summary([s["end_accuracy"] for s in scores.values()], [s["end_macro_f1"] for s in scores.values()])
    result = {
        "model": config.model,
        "sequence": [t.name for t in sequence.tasks],
        "end_task": settings,
        "scores": scores,
        **summary,
        "seconds": seconds,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
