"""The CPU-scale long benchmark (issue 18): orders 4-6 without yahoo (14 tasks), one queue.

The one command that starts or continues the whole queue (from the repository root; every run
resumes after its last finished task, finished runs are skipped, a run another process holds is
skipped, so the command can be rerun at any time, or run twice side by side):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/cl_long.py --out $PWD/benchmarks/results/minilm_long

``--list`` prints the queue with each run's rate and state (done, tasks finished, pending) and
trains nothing. The queue holds the issue's list, in an order that completes the with/without
pairs over the three orders first (a run takes 30-45 minutes of one core, so the queue spans
several sessions):

1. order 4, seed 0: lora, lora+migu, finetune, finetune+migu, finetune+random_update, inc_lora,
   inc_lora+migu (MiniLM, configs/cpu/minilm_long.yaml);
2. order 4: finetune+migu, lora+migu and inc_lora+migu at their baseline's rate (MIGU's chosen
   rate is 3x its baseline's, and its first task, where the mask is paused, is plain training at
   that rate: these tell the rate from the mask);
3. orders 5 and 6, seed 0: lora, lora+migu, finetune, finetune+migu; then inc_lora,
   inc_lora+migu;
4. SmolLM2-135M-Instruct, lora and lora+migu, order 4, seed 0 (configs/cpu/smollm2_lora_long.yaml);
5. order 6: inc_lora+random_update at inc_lora+migu's rate (IncLoRA+MIGU beat IncLoRA there, one
   seed: the random-row control at the same rate and threshold tells the magnitude ranking from
   merely updating fewer rows);
6. lora and lora+migu, seed 1, on orders 4, 5 and 6;
7. orders 5 and 6: finetune+random_update (the random-row control; order 4's comes with its pair);
8. orders 5 and 6: finetune+migu and lora+migu at their baseline's rate (beyond the issue's list:
   at 3x MiniLM's embeddings collapse, so the same-rate pairs are the ones that say what the mask
   does; these give them three orders).

Rates: MiniLM runs take each method's rate from the standard benchmark's validation choice
(``--choice-file``, default benchmarks/results/minilm_standard/lr_choice.json: order 1's
validation split, seed 0); the SmolLM2 runs keep their config's rate (1e-3, O-LoRA's LoRA
rate, for both). MIGU's threshold is the paper's for the combination (runner's
``default_threshold``: 0.7 for every method here). Tables:

    migu report benchmarks/results/minilm_long --effect-of migu --effect-of random_update --timings
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from migu.bench import apply_overrides, load_yaml, run_config
from migu.bench.queue import run_queue
from migu.methods.registry import default_threshold, parse_spec

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / "configs" / "cpu" / "minilm_long.yaml"
SMOLLM2 = ROOT / "configs" / "cpu" / "smollm2_lora_long.yaml"
CHOICE = ROOT / "benchmarks" / "results" / "minilm_standard" / "lr_choice.json"
ORDERS = ("order4", "order5", "order6")
FAMILIES = ("lora", "lora+migu", "finetune", "finetune+migu", "finetune+random_update", "inc_lora", "inc_lora+migu")


def queue() -> list[tuple[Path, str, str, int]]:
    """(config, method, order, seed) in priority order (the module's docstring)."""
    later = ORDERS[1:]
    items = [(MINILM, m, "order4", 0) for m in FAMILIES]
    items += [(MINILM, f"{m}+migu@{m}", "order4", 0) for m in ("finetune", "lora", "inc_lora")]  # baseline's rate
    items += [(MINILM, m, o, 0) for o in later for m in ("lora", "lora+migu", "finetune", "finetune+migu")]
    items += [(MINILM, m, o, 0) for o in later for m in ("inc_lora", "inc_lora+migu")]
    items += [(SMOLLM2, m, "order4", 0) for m in ("lora", "lora+migu")]
    items += [(MINILM, "inc_lora+random_update@inc_lora+migu", "order6", 0)]  # MIGU's rate, its control
    items += [(MINILM, m, o, 1) for o in ORDERS for m in ("lora", "lora+migu")]
    items += [(MINILM, "finetune+random_update", o, 0) for o in later]
    items += [(MINILM, f"{m}+migu@{m}", o, 0) for o in later for m in ("finetune", "lora")]  # baseline's rate
    return items


def _overrides(config: Path, method: str, order: str, seed: int, rates: dict[str, str], out: Path) -> list[str]:
    """The run's config keys; ``X@Y`` is method X at method Y's rate, beside ``out`` in
    ``<out>_at_baseline_rate`` when X has a chosen rate of its own (so that the report of ``out``
    holds one rate per method), in ``out`` when it has none."""
    method, _, rate_of = method.partition("@")
    t = default_threshold(parse_spec(method))
    folder = out.with_name(out.name + "_at_baseline_rate") if rate_of and method in rates else out
    items = [f"method={method}", f"data.order={order}", f"seed={seed}", f"output_dir={folder}",
             f"methods.migu.threshold={t}", f"methods.random_update.threshold={t}"]  # fmt: skip
    if config == MINILM:
        items.append(f"train.lr={rates[rate_of or method]}")
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "minilm_long"),
                        help="folder of the runs (an absolute path when running from another worktree)")  # fmt: skip
    parser.add_argument("--choice-file", default=str(CHOICE), help="the MiniLM rate per method (JSON)")
    parser.add_argument("--data-root", help="override data.root of the configs")
    parser.add_argument("--list", action="store_true", help="print the queue and each run's state; train nothing")
    parser.add_argument("--only", metavar="TEXT", help="only the queue's runs whose name as --list prints it "
                        "(FOLDER/RUN) contains TEXT, e.g. minilm_long/minilm_lora_order5 (to give a run a core "
                        "now; the full queue skips it once done or while held)")  # fmt: skip
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every run (repeatable); changes the runs' fingerprints",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    rates = json.loads(Path(args.choice_file).read_text())
    missing = sorted({m.split("@")[-1] for c, m, _, _ in queue() if c == MINILM} - set(rates))
    if missing:
        parser.error(f"no rate for {missing} in {args.choice_file}")
    configs = []
    for config_path, method, order, seed in queue():
        raw = load_yaml(config_path)
        if args.data_root:
            raw["data"]["root"] = args.data_root
        configs.append(run_config(apply_overrides(raw, [*_overrides(config_path, method, order, seed, rates, out),
                                                        *args.set])))  # fmt: skip
    status = run_queue(configs, "cl_long.py", args.list, bool(args.data_root), args.only)
    if status:
        parser.exit(status)


if __name__ == "__main__":
    main()
