"""The paper's protocol, measured fairly (issue 37): one queue of MiniLM runs, resumable.

Every run follows ``configs/protocols/paper.yaml`` (one rate for every arm, batch 8, one
epoch, constant rate, T 0.7, first task unmasked, task and dataset names in the input, fp32).
The one command that starts or continues the queue (from the repository root; finished runs are
skipped, an unfinished one resumes after its last finished task, a run another process holds is
skipped, so run it twice side by side, one per core):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/fair.py --out $PWD/benchmarks/results/fair

``--list`` prints the queue with each run's state; ``--only TEXT`` keeps the runs whose
``FOLDER/RUN`` contains TEXT. The queue, in the issue's order of work:

1. ``standard/``: orders 1-3 at 1e-4: finetune, finetune+migu, finetune+random_update (seeds
   0-2) and lora, lora+migu (seeds 0-1), seed by seed so that a partial table is of whole pairs;
2. ``no_names/``: the FT pair without the names in the input (orders 1-3, seed 0);
3. ``rates/``: order 1, seed 0, the FT triple at 3e-5 and 3e-4 (1e-4 is in ``standard/``), for
   learning against forgetting across rates; then, beyond the issue's list, finetune at 1e-5
   (order 1, seed 0) and finetune at 3e-5 on the other eight (order, seed) units of the standard
   runs: order 1 showed finetuning at 3e-5 as good as FT+MIGU at 1e-4, and one unit is no answer;
4. ``long/``: order 4 (14 tasks), seed 0: finetune, finetune+migu, finetune+random_update, lora,
   lora+migu, all at 1e-4; then, beyond the list, finetune at 3e-5 on order 4 (in ``rates/``, as
   ``lr3e-5_finetune_long_order4_seed0``): the standard orders' question on the long one;
5. ``instruct/``: the instruction setting at the paper's metric: SmolLM2's LoRA pair (seed 1, 1e-3)
   and FT pair (seed 0, 2e-5) of ``configs/cpu/instruct_smollm2.yaml`` trained again (the same
   training; its final held-out loss checks that against ``benchmarks/results/instruct_smollm2``),
   each scored before and after training on lm-eval's HellaSwag, WinoGrande, ARC-Challenge and
   PIQA at 500 documents a task (the before-training point is computed once and shared), their
   models saved for ``migu eval``, each document's result kept (``keep_samples``) for the
   report's paired per-document intervals between the arms of a pair;
6. ``no_names/`` again at seed 1, orders 1 and 3: at seed 0 the ablation has two independent
   units (orders 1 and 2 share their first tasks), too few for an interval; these make four;
7. ``long/``: orders 5 and 6 as order 4, if the queue allows.

Tables and figure:

    migu report benchmarks/results/fair/standard --baseline '' --effect-of migu --effect-of random_update
    migu report benchmarks/results/fair/no_names benchmarks/results/fair/standard --by data.names_in_input ...
    migu plot benchmarks/results/fair/rates benchmarks/results/fair/standard ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from migu.bench import RunConfig, apply_overrides, load_yaml, run_config
from migu.bench.queue import run_queue

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ROOT / "configs" / "cpu" / "minilm_standard_paper.yaml"
LONG = ROOT / "configs" / "cpu" / "minilm_long_paper.yaml"
INSTRUCT = ROOT / "configs" / "cpu" / "instruct_smollm2.yaml"
# the paper's Figure 3 averages the first three; PIQA keeps the four-task mean comparable
GENERAL_500 = (
    "evaluators={lm_loss: {}, lm_eval: {tasks: [hellaswag, winogrande, arc_challenge, piqa], "
    "limit: 500, num_fewshot: 0}}"
)
FT = ("finetune", "finetune+migu", "finetune+random_update")
LORA = ("lora", "lora+migu")
ORDERS = ("order1", "order2", "order3")


def no_names(seed: int, orders: tuple[str, ...]) -> list[tuple[Path, str, str, tuple[str, ...]]]:
    """The FT pair without the task and dataset names in the input."""
    extra = ("data.names_in_input=false", "protocol=paper_without_names")
    return [(STANDARD, "no_names", m, (f"data.order={o}", f"seed={seed}", *extra)) for o in orders for m in FT[:2]]


def queue() -> list[tuple[Path, str, str, tuple[str, ...]]]:
    """(config, folder under --out, method, extra overrides) in the order of work."""
    items: list[tuple[Path, str, str, tuple[str, ...]]] = []
    for seed in (0, 1, 2):
        for order in ORDERS:
            methods = FT + (LORA if seed < 2 else ())
            items += [(STANDARD, "standard", m, (f"data.order={order}", f"seed={seed}")) for m in methods]
    items += no_names(0, ORDERS)
    for lr in ("3e-5", "3e-4"):
        items += [(STANDARD, "rates", m, ("data.order=order1", "seed=0", f"train.lr={lr}", f"name=lr{lr}_{m}"))
                  for m in FT]  # fmt: skip
    # beyond the list: finetune at 1e-5 (does its line bend?) and at 3e-5 on every other
    # standard unit, for finetuning at a third of the rate against FT+MIGU at 1e-4 over 9 pairs
    items += [(STANDARD, "rates", "finetune", ("data.order=order1", "seed=0", "train.lr=1e-5", "name=lr1e-5_finetune"))]
    items += [(STANDARD, "rates", "finetune", (f"data.order={o}", f"seed={s}", "train.lr=3e-5",
                                               f"name=lr3e-5_finetune_{o}_seed{s}"))
              for s in (0, 1, 2) for o in ORDERS if (o, s) != ("order1", 0)]  # fmt: skip
    items += [(LONG, "long", m, ("data.order=order4", "seed=0")) for m in FT + LORA]
    # beyond the list: at 1e-4 finetuning collapses on order 4 (new-task accuracy near chance from
    # imdb on) where FT+MIGU does not; finetuning at 3e-5 asks whether a lower rate avoids it too
    items += [(LONG, "rates", "finetune", ("data.order=order4", "seed=0", "train.lr=3e-5",
                                           "name=lr3e-5_finetune_long_order4_seed0"))]  # fmt: skip
    at_ends = ("data.evaluate_every=task", GENERAL_500, "save_model=true", "keep_samples=true")
    items += [(INSTRUCT, "instruct", m, ("seed=1", *at_ends)) for m in LORA]
    items += [(INSTRUCT, "instruct", m, ("seed=0", "train.lr=2e-5", *at_ends)) for m in ("finetune", "finetune+migu")]
    items += no_names(1, ("order1", "order3"))  # two more independent units (orders 1 and 2 share a start)
    for order in ("order5", "order6"):
        items += [(LONG, "long", m, (f"data.order={order}", "seed=0")) for m in FT + LORA]
    return items


def configs(out: Path, data_root: str | None = None, extra: list[str] | None = None) -> list[RunConfig]:
    """The queue as checked run configs under ``out``."""
    found = []
    for path, folder, method, overrides in queue():
        raw = load_yaml(path)
        raw.pop("method", None)
        if data_root:
            raw["data"]["root"] = data_root
        keys = [f"method={method}", *overrides, f"output_dir={out / folder}", *(extra or [])]
        found.append(run_config(apply_overrides(raw, keys)))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fair"),
                        help="folder of the runs (an absolute path when running from another worktree)")  # fmt: skip
    parser.add_argument("--data-root", help="override data.root of the configs")
    parser.add_argument("--list", action="store_true", help="print the queue and each run's state; train nothing")
    parser.add_argument("--only", metavar="TEXT", help="only the runs whose FOLDER/RUN (as --list prints it) "
                        "contains TEXT")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every run (changes the runs' fingerprints)")  # fmt: skip
    args = parser.parse_args(argv)
    runs = configs(Path(args.out).resolve(), args.data_root, args.set)
    status = run_queue(runs, "fair.py", args.list, bool(args.data_root), args.only)
    if status:
        parser.exit(status)


if __name__ == "__main__":
    main()
