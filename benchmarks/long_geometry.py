"""Why MIGU does not learn some tasks of the long benchmark (issue 18): embedding geometry.

On the long benchmark, finetune+migu and lora+migu (at their chosen rate, 3x their baseline's)
train some tasks at a loss of exactly ln(number of options), i.e. every option scores the same.
This queue trains the first four tasks of order 4 (mnli, cb, wic, copa) with and without MIGU at
both rates and scores, beside accuracy, the ``embedding_geometry`` evaluator (mean cosine
between input embeddings and between label embeddings, spread of an input's option cosines)
before training and after every task: it shows whether the embeddings collapse, and whether the
rate or the mask does it. MIGU's first task is unmasked (``skip_first_task``), so X and X+migu
share their first row.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/long_geometry.py
    migu report benchmarks/results/minilm_long_geometry --by train.lr --baseline '' --score input_cosine --matrices

Resumable like every run (rerun the command; finished runs are skipped); 100 test examples per
task (the geometry needs few; accuracy is noisier than the long benchmark's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from migu.bench import apply_overrides, load_yaml, run_config
from migu.bench.grid import run_one

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cpu" / "minilm_long.yaml"
TASKS = "[mnli,cb,wic,copa]"
RUNS = [  # (method, rate): the long benchmark's chosen rate of X+migu is 3x X's
    ("finetune", "3e-4"), ("finetune+migu", "3e-4"), ("finetune", "1e-4"), ("finetune+migu", "1e-4"),
    ("lora", "3e-3"), ("lora+migu", "3e-3"), ("lora", "1e-3"), ("lora+migu", "1e-3"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "minilm_long_geometry"))
    parser.add_argument("--data-root", help="override data.root of the config")
    args = parser.parse_args(argv)
    for method, lr in RUNS:
        name = f"minilm_{method}_lr{lr}_order4first4_seed0"
        overrides = [f"method={method}", f"train.lr={lr}", f"data.order={TASKS}", "data.replace={}",
                     "data.n_test=100", "data.evaluate_tasks=all", "evaluators=[classification,embedding_geometry]",
                     f"output_dir={Path(args.out).resolve()}", f"name={name}"]  # fmt: skip
        if args.data_root:
            overrides.append(f"data.root={args.data_root}")
        config = run_config(apply_overrides(load_yaml(CONFIG), overrides))
        print(f"== {name}  [{time.strftime('%H:%M:%S')}]", flush=True)
        run_one(config)  # (a run another process holds is skipped, with a line saying so)


if __name__ == "__main__":
    main()
