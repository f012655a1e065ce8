"""The runs behind the figures of ``migu plot`` (threshold sweep, component ablation, task overlap).

    python benchmarks/figures_runs.py --out benchmarks/results/minilm_standard_fp32/figures
    migu plot benchmarks/results/minilm_standard_fp32/figures --out docs/figures \\
        --html docs/figures/report.html

MiniLM on the CPU-scale standard benchmark (``configs/cpu/minilm_standard.yaml``), order 1, seed 0
(``--seeds 0,1,2`` adds seeds), fp32 (``train.mixed_precision=no``: this CPU has no native bf16),
test splits with seen-only evaluation (``data.evaluate_tasks=seen``: AA, BWT and forgetting at
about half the evaluation cost). Each method trains at the rate chosen for it on validation data
(``benchmarks/results/minilm_standard_fp32/lr_choice.json``, else the bf16 protocol's
``benchmarks/results/minilm_standard/lr_choice.json``, which holds finetune, finetune+migu, lora
and lora+migu); MIGU's observe mode trains as plain finetuning, so at finetune's rate.

Groups (``--groups``, default all):
- ``sweep``: T in {0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95} for finetune+migu and lora+migu (Figure 4);
- ``ablation``: finetune+migu at T 0.7 masking attention only, FFN only, Q, K, V or O alone, and
  all linear layers (Table 5);
- ``overlap``: finetune with MIGU observing (``methods.migu.mask_mode=observe``, first task
  recorded too) and finetune+migu at T 0.7, whose kept-row artifacts the overlap heatmaps read
  (Figures 5, 15, 16).
A run shared by groups (finetune+migu at T 0.7 with all layers) is one run folder. 21 runs per
seed; every run is resumable (rerun the same command) and a run another process holds is skipped.
``--set key=value`` adds overrides to every run (e.g. a tiny model and data to test the plumbing:
``--set model=tiny-bert data.root=... data.order=tiny``); ``--dry-run`` prints the plan only.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from migu.bench import apply_overrides, load_yaml, run_config
from migu.bench.grid import run_one
from migu.report.figdata import score_of

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "cpu" / "minilm_standard.yaml"
LR_FILES = (ROOT / "benchmarks/results/minilm_standard_fp32/lr_choice.json",
            ROOT / "benchmarks/results/minilm_standard/lr_choice.json")  # fmt: skip
THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95)
SWEEP_METHODS = ("finetune+migu", "lora+migu")
# BERT-style layer names (MiniLM): encoder.layer.N.attention.self.{query,key,value}, .attention.output.dense
ABLATION: dict[str, dict[str, Any]] = {
    "attention": {"layers": "attention"},
    "ffn": {"layers": "ffn"},
    "q": {"layers": "attention", "include": [r"attention\.self\.query$"]},
    "k": {"layers": "attention", "include": [r"attention\.self\.key$"]},
    "v": {"layers": "attention", "include": [r"attention\.self\.value$"]},
    "o": {"layers": "attention", "include": [r"attention\.output\.dense$"]},
}
GROUPS = ("sweep", "ablation", "overlap")


def _t(value: float) -> str:
    return f"{value:g}"


def planned(groups: tuple[str, ...]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """``{run name stem: (method, method whose rate it trains at, MIGU settings)}``; a run that two
    groups share has one name and the same settings."""
    plan: dict[str, tuple[str, str, dict[str, Any]]] = {}

    def add(name: str, method: str, rate_of: str, migu: dict[str, Any]) -> None:
        if name in plan and plan[name] != (method, rate_of, migu):
            raise AssertionError(f"{name} planned twice with different settings")
        plan[name] = (method, rate_of, migu)

    if "sweep" in groups:
        for method in SWEEP_METHODS:
            for t in THRESHOLDS:
                add(f"{method}_t{_t(t)}", method, method, {"threshold": t})
    if "ablation" in groups:
        add("finetune+migu_t0.7", "finetune+migu", "finetune+migu", {"threshold": 0.7})  # all linear layers
        for name, settings in ABLATION.items():
            add(f"finetune+migu_t0.7_{name}", "finetune+migu", "finetune+migu", {"threshold": 0.7, **settings})
    if "overlap" in groups:
        add("finetune+migu_t0.7", "finetune+migu", "finetune+migu", {"threshold": 0.7})
        add("finetune_observe_t0.7", "finetune+migu", "finetune",
            {"threshold": 0.7, "mask_mode": "observe", "skip_first_task": False})  # fmt: skip
    return plan


def rates(files: tuple[Path, ...] = LR_FILES) -> dict[str, tuple[str, Path]]:
    """The learning rate of each method, with the file it came from (earlier files first)."""
    found: dict[str, tuple[str, Path]] = {}
    for path in reversed(files):
        if path.is_file():
            found.update({m: (str(lr), path) for m, lr in json.loads(path.read_text()).items()})
    return found


def configs(raw: dict[str, Any], groups: tuple[str, ...], seeds: list[int], orders: list[str], out: str,
            extra: list[str], lrs: dict[str, tuple[str, Path]]) -> list[Any]:  # fmt: skip
    """One checked ``RunConfig`` per (seed, order, planned run)."""
    base = {k: v for k, v in raw.items() if k != "method"}
    out_configs = []
    for seed in seeds:
        for order in orders:
            for name, (method, rate_of, migu) in planned(groups).items():
                if rate_of not in lrs:
                    raise ValueError(f"no learning rate for {rate_of} in {', '.join(map(str, LR_FILES))}")
                one = copy.deepcopy(base)
                one.setdefault("methods", {})["migu"] = {**one.get("methods", {}).get("migu", {}), **migu}
                one = apply_overrides(one, [
                    f"method={method}", f"train.lr={lrs[rate_of][0]}", "train.mixed_precision=no",
                    "data.evaluate_tasks=seen", f"seed={seed}", f"data.order={order}", f"output_dir={out}",
                    f"name={name}_{order}_seed{seed}", *extra,
                ])  # fmt: skip
                out_configs.append(run_config(one))
    return out_configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/minilm_standard_fp32/figures")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {', '.join(GROUPS)}")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--orders", default="order1")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their rates, run nothing")
    args = parser.parse_args(argv)
    groups = tuple(args.groups.split(","))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    lrs = rates()
    todo = configs(load_yaml(args.config), groups, [int(s) for s in args.seeds.split(",")], args.orders.split(","),
                   args.out, args.set, lrs)  # fmt: skip
    busy = []
    for config in todo:
        where = f"{config.output_dir}/{config.run_name()}"
        if args.dry_run:
            print(f"{where}  method={config.method} lr={config.train.lr} migu={config.methods.get('migu')}")
            continue
        print(f"== {where}", flush=True)
        result = run_one(config)  # None (and a line saying so) when another process holds it
        if result is None:
            busy.append(where)
            continue
        m = score_of(result, "accuracy").summary()  # type: ignore[union-attr]
        print(f"   AA {m['aa']:.2f}  BWT {m['bwt']:.2f}", flush=True)
    if busy:
        print(f"{len(busy)} run(s) left to the processes running them: {', '.join(busy)}")
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
