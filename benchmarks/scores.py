"""Which rows to update (issue 38): MIGU's magnitude against the other row scores and controls,
one harness, one rate. Resumable, shareable by two processes (one per core), as ``fair.py``:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/scores.py --out $PWD/benchmarks/results/fair

Every run follows the paper protocol (``configs/protocols/paper.yaml``: 1e-4 for every arm,
batch 8, names in the input, T 0.7, first task unmasked, fp32) and lands in the fair queue's
``standard/`` folder, so finetune, finetune+migu and finetune+random_update (``fair.py``) are
shared, not rerun. The queue:

1. ``freeze_select/``: freeze_bottom with 1-5 of MiniLM's 6 blocks frozen, on order 1's
   validation split (200 examples held out of each training file), seed 0; the best AA is
   written to ``freeze_choice.json`` (never chosen on test examples);
2. ``standard/``: orders 1-3, seeds 0-1: finetune+fisher, finetune+gradient, freeze_bottom (the
   chosen blocks) and osf;
3. ``long/``: order 4, seed 0: the same four (the others come with ``fair.py``);
4. ``standard/`` again at seed 2 (beyond the issue's list, if the queue allows): the six
   independent units of the FT triple's pairs, where seeds 0-1 give four.

``osf`` (PEFT's ``OSFConfig``) runs with the scores in steps 2 and 3. ``--list`` prints the queue
with each run's state; ``--only TEXT`` keeps the runs whose ``FOLDER/RUN`` contains TEXT (e.g.
``--only long/`` for step 3 alone). Tables:

    migu report benchmarks/results/fair/standard --baseline finetune+random_update
    migu report benchmarks/results/fair/standard --baseline finetune
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from migu import metrics
from migu.bench import RunConfig, apply_overrides, load_yaml, run_config
from migu.bench.queue import matching, run_folder, run_queue

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ROOT / "configs" / "cpu" / "minilm_standard_paper.yaml"
LONG = ROOT / "configs" / "cpu" / "minilm_long_paper.yaml"
SCORES = ("finetune+fisher", "finetune+gradient")
BLOCKS = (1, 2, 3, 4, 5)


def _config(path: Path, out: Path, method: str, keys: list[str]) -> RunConfig:
    raw = load_yaml(path)
    raw.pop("method", None)
    return run_config(apply_overrides(raw, [f"method={method}", f"output_dir={out}", *keys]))


def selection(out: Path) -> list[RunConfig]:
    """freeze_bottom at each number of frozen blocks, on order 1's validation split, seed 0."""
    return [_config(STANDARD, out / "freeze_select", "freeze_bottom",
                    ["data.order=order1", "seed=0", "data.evaluate_on=validation", "data.n_validation=200",
                     f"methods.freeze_bottom.blocks={k}", f"name=blocks{k}"]) for k in BLOCKS]  # fmt: skip


def choose_blocks(out: Path) -> int | None:
    """The number of frozen blocks with the best validation AA (ties: fewer), once all have run;
    kept in ``freeze_choice.json``."""
    choice = out / "freeze_choice.json"
    if choice.is_file():
        return int(json.loads(choice.read_text())["blocks"])
    found = {}
    for k, config in zip(BLOCKS, selection(out), strict=True):
        results = run_folder(config) / "results.json"
        if not results.is_file():
            return None
        found[k] = metrics.average_accuracy(json.loads(results.read_text())["accuracy_matrix"])
    best = max(found, key=lambda k: (found[k], -k))
    choice.write_text(json.dumps({"blocks": best, "validation_aa": found}, indent=1))
    return best


def tests(out: Path, blocks: int) -> list[RunConfig]:
    methods = [*SCORES, "freeze_bottom", "osf"]
    freeze = [f"methods.freeze_bottom.blocks={blocks}"]
    runs = [_config(STANDARD, out / "standard", m, [f"data.order={o}", f"seed={s}", *freeze])
            for s in (0, 1) for o in ("order1", "order2", "order3") for m in methods]  # fmt: skip
    runs += [_config(LONG, out / "long", m, ["data.order=order4", "seed=0", *freeze]) for m in methods]
    # beyond the list: seed 2, so that every method has the six units the FT triple has
    runs += [_config(STANDARD, out / "standard", m, [f"data.order={o}", "seed=2", *freeze])
             for o in ("order1", "order2", "order3") for m in methods]  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fair"),
                        help="the fair queue's folder (an absolute path from another worktree)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the queue and each run's state; train nothing")
    parser.add_argument("--only", metavar="TEXT", help="only the runs whose FOLDER/RUN (as --list prints it) "
                        "contains TEXT, e.g. seed1 or long/")  # fmt: skip
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    select = matching(selection(out), args.only)
    status = run_queue(select, "scores.py", args.list) if select else 0
    blocks = choose_blocks(out)
    if blocks is None:
        print("scores.py: the freeze_bottom selection is not finished; the test runs wait for it")
        parser.exit(status)
    runs = matching(tests(out, blocks), args.only)
    if not select and not runs:
        parser.exit(2, f"scores.py: no run of the queue matches --only {args.only!r}\n")
    print(f"freeze_bottom: {blocks} block(s) frozen (validation, {out / 'freeze_choice.json'})")
    parser.exit(status or (run_queue(runs, "scores.py", args.list) if runs else 0))


if __name__ == "__main__":
    main()
