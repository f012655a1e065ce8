"""How much smaller EWC's Fisher diagonal comes out when gradients are squared per batch rather
than per example, on the packaged MiniLM and the first task of order 1 (dbpedia).

    python benchmarks/ewc_fisher.py [--examples 128] [--batch 64] [--out FILE.json]

Model, data and sequence length come from the standard benchmark's config
(``configs/cpu/minilm_standard.yaml``, order 1), read by the runner's own loader; EWC samples its
``--examples`` from the first task's training data as it does in the benchmark's runs. Both
estimates are computed by ``migu.methods.ewc.Ewc.after_task`` on those examples of the pretrained
model: ``fisher_batch_size=1`` (the empirical Fisher, the default) and ``fisher_batch_size=--batch``
(the squared gradient of each batch's mean loss). Prints JSON: the mean Fisher value of each (over
all parameters), their ratio and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from migu.bench import apply_overrides, load_tasks, load_yaml, run_config
from migu.formats import make_format
from migu.methods.base import TaskContext
from migu.methods.ewc import Ewc, EwcConfig
from migu.models import load_model

CONFIG = Path(__file__).parents[1] / "configs" / "cpu" / "minilm_standard.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    raw = apply_overrides(load_yaml(args.config), args.set)
    raw["method"] = "finetune+ewc"
    config = run_config(raw)
    sequence = load_tasks(config)
    task = sequence[0]
    bundle = load_model(config.model, seed=config.seed)
    fmt = make_format(bundle.arch, bundle.tokenizer, config.train.max_length)
    ctx = TaskContext(0, task, len(sequence), config.seed, 1, lambda m, ex: fmt.loss(m, fmt.batch(ex)), args.batch)
    result: dict = {"task": task.name, "examples": min(args.examples, len(task.train)), "batch": args.batch}
    for label, size in (("per_example", 1), ("per_batch", args.batch)):
        ewc = Ewc(EwcConfig(fisher_examples=args.examples, fisher_batch_size=size))
        start = time.perf_counter()
        ewc.after_task(bundle.model, ctx)
        seconds = time.perf_counter() - start
        total = sum(float(f.sum()) for f in ewc.fisher.values())
        count = sum(f.numel() for f in ewc.fisher.values())
        result[label] = {"mean_fisher": total / count, "seconds": round(seconds, 1)}
    result["ratio"] = result["per_example"]["mean_fisher"] / result["per_batch"]["mean_fisher"]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
