"""``migu run CONFIG.yaml [key=value ...]`` and ``migu report RUN_DIR ...``."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import metrics


def _grid(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """``method`` and ``seed`` may be lists (or comma-separated): one run per combination."""

    def values(key: str) -> list[Any]:
        v = raw.get(key)
        if isinstance(v, str) and "," in v:
            return [x.strip() for x in v.split(",")]
        return v if isinstance(v, list) else [v]

    runs = []
    for method, seed in itertools.product(values("method"), values("seed")):
        one = dict(raw)
        if method is not None:
            one["method"] = method
        if seed is not None:
            one["seed"] = int(seed)
        runs.append(one)
    return runs


def cmd_run(args: argparse.Namespace) -> int:
    from .bench import RunInProgress, apply_overrides, load_yaml, run, run_config
    from .report.tables import format_matrix, report_markdown

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    configs = [run_config(one) for one in _grid(raw)]  # check every run's config before the first starts
    done, busy = [], []
    for config in configs:
        print(f"== {config.run_name()}", flush=True)
        try:
            result = run(config)
        except RunInProgress as err:  # a grid started twice: each process takes the runs the other has not
            print(f"   skipped: {err}", flush=True)
            busy.append(config.run_name())
            continue
        print(format_matrix(result), flush=True)
        done.append((config, result))
    if len(done) > 1:
        print(report_markdown([r for _, r in done], baseline=done[0][1]["method"]))
    for config, result in done:
        m = metrics.summary(result["accuracy_matrix"])
        where = Path(config.output_dir) / config.run_name() / "results.json"
        print(f"{result['method']:>24}  AA {m['aa']:6.2f}  BWT {m['bwt']:6.2f}  -> {where}")
    if busy:
        print(f"migu: error: {len(busy)} run(s) skipped, another process is running them: {', '.join(busy)}",
              file=sys.stderr)  # fmt: skip
        return 3
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.tables import load_results, report_markdown

    runs = load_results(args.paths)
    baseline = args.baseline or None
    print(report_markdown(runs, baseline, matrices=args.matrices, by=tuple(args.by), timings=args.timings,
                          effect_of=tuple(args.effect_of)))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="migu", description="Continual learning with MIGU.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a task sequence from a YAML config")
    p_run.add_argument("config", help="YAML file (see configs/)")
    p_run.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=3e-5 method=finetune,finetune+migu")
    p_run.set_defaults(func=cmd_run)
    p_rep = sub.add_parser("report", help="tables from results.json files")
    p_rep.add_argument("paths", nargs="+", help="results files or folders holding them")
    p_rep.add_argument("--baseline", default="finetune", help="method for paired differences ('' for none)")
    p_rep.add_argument("--matrices", action="store_true", help="also print every accuracy matrix")
    p_rep.add_argument("--timings", action="store_true", help="also print training and evaluation time per run")
    p_rep.add_argument(
        "--effect-of", action="append", default=[], metavar="METHOD",
        help="pair every run using METHOD with the same run without it (e.g. --effect-of migu: the "
        "paper's Table 2, each CL method with and without MIGU)",
    )  # fmt: skip
    p_rep.add_argument(
        "--by", action="append", default=[], metavar="KEY",
        help="config key that splits methods into variants, e.g. --by train.lr --by methods.migu.threshold",
    )  # fmt: skip
    p_rep.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"migu: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
