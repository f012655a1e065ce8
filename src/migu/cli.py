"""``migu run CONFIG.yaml [key=value ...]`` and ``migu report RUN_DIR ...``.

A user's mistake (a wrong key or value, a missing or damaged file, an unknown model or method)
is one line on stderr, ``migu: error: ...`` naming the key or file, and exit status 2, before
anything is written; a grid skipped in part because another process runs some of it exits 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .signals import Stopped, stop_on_signals

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ModuleNotFoundError)


def cmd_run(args: argparse.Namespace) -> int:
    from .bench import apply_overrides, load_yaml
    from .bench.grid import check_grid, run_grid
    from .report.figdata import variant_keys
    from .report.runs import choose_score, summary_of
    from .report.tables import format_matrix, report_markdown

    raw = apply_overrides(load_yaml(args.config), args.overrides)
    if args.log_with:  # (not an override: a comma there makes a grid)
        raw["log_with"] = [name.strip() for name in args.log_with.split(",") if name.strip()]
    configs = check_grid(raw)  # the whole grid, before its first run starts
    # under torchrun / accelerate launch every rank runs the grid; only rank 0 prints
    main_process = int(os.environ.get("RANK", "0")) == 0

    def show(config: Any, result: dict[str, Any]) -> None:
        if main_process:
            print(format_matrix(result), flush=True)

    done, busy = run_grid(configs, on_result=show)
    if not main_process:
        return 3 if busy else 0
    results = [r for _, r in done]
    score = choose_score(results) if results else None
    if len(done) > 1:  # a grid over settings (train.lr=1e-4,3e-4) shows each value as a variant
        by = tuple(variant_keys(results))
        print(report_markdown(results, baseline=results[0]["method"], score=score, by=by))
    for config, result in done:
        m = summary_of(result, score or "accuracy")
        where = Path(config.output_dir) / config.run_name() / "results.json"
        print(f"{result['method']:>24}  AA {m['aa']:6.2f}  BWT {m['bwt']:6.2f}  -> {where}")
    if busy:
        print(f"migu: error: {len(busy)} run(s) skipped, another process is running them: {', '.join(busy)}",
              file=sys.stderr)  # fmt: skip
        return 3
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .methods.registry import effective_method_settings
    from .report.checks import check_options
    from .report.runs import add_mean_column, choose_score, load_results, parse_mean_of
    from .report.tables import report_markdown

    runs = load_results(args.paths, effective_method_settings)
    mean_of: dict[str, tuple[str, ...]] = {}
    for spec in args.mean_of:
        name, columns = parse_mean_of(spec)
        if not sum(add_mean_column(run, name, columns) for run in runs):
            raise ValueError(f"--mean-of {spec}: no suite score of these runs has the columns {', '.join(columns)}")
        mean_of[name] = columns
    score = choose_score(runs, args.score)
    check_options(runs, args.baseline, tuple(args.by), tuple(args.effect_of), score)
    baseline = "finetune" if args.baseline is None else args.baseline or None
    print(report_markdown(runs, baseline, matrices=args.matrices, by=tuple(args.by), timings=args.timings,
                          effect_of=tuple(args.effect_of), score=score, mean_of=mean_of))  # fmt: skip
    return 0


def _yaml_text(value: object) -> str:
    """A default as it is written in a config (``true``, ``null``, ``[]``)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _defaults(cls: type | None) -> str:
    if cls is None:
        return ""
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = "?"
        if dataclasses.is_dataclass(value):
            out.append(_defaults(type(value)))
            continue
        out.append(f"{f.name}={_yaml_text(value)}")
    return " ".join(out)


def run_help() -> str:
    """The config sections, methods (with their settings), models, data sources and evaluators,
    for ``migu run --help``; built from the registries so that it cannot fall out of date."""
    import textwrap

    from .bench.config import DataConfig, RunConfig
    from .data import SOURCES
    from .evaluators import EVALUATORS
    from .methods import METHODS
    from .models.loading import TINY
    from .train.config import TrainConfig

    def block(title: str, lines: list[str]) -> str:
        wrapped = [textwrap.fill(line, 100, initial_indent="  ", subsequent_indent="      ") for line in lines]
        return title + "\n" + "\n".join(wrapped)

    top = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("data", "train", "methods")]
    sections = [
        f"top level: {', '.join(top)} (method and seed take lists or a,b,c: one run per combination)",
        f"data.*: {_defaults(DataConfig)}",
        f"train.*: {_defaults(TrainConfig)}",
        "methods.<name>.*: the settings of a method (below), e.g. methods.migu.threshold=0.5",
    ]
    methods = [
        f"{name}: {_defaults(cls) or '(no settings)'}"
        for name, cls in ((n, METHODS.entry(n).config_cls) for n in METHODS)
    ]
    methods.append("migu's default threshold follows the paper per combination: 0.7; 0.4 with replay; 0.1 with olora")
    models = [
        "minilm (all-MiniLM-L6-v2, encoder) and smollm2 (SmolLM2-135M-Instruct, decoder): packaged, offline",
        f"{', '.join(TINY)}: random 2-layer models for tests",
        "or any Hugging Face hub id (cached for offline use) or local model folder",
    ]
    return "\n\n".join([
        block("config sections (in the YAML file, or key=value: train.lr=3e-5 method=finetune,finetune+migu):",
              sections),
        block("methods (compose with +, e.g. lora+replay+migu):", methods),
        block("models (model=...):", models),
        block("data sources (data.source=...):", [", ".join(sorted(SOURCES))]),
        block("evaluators (evaluators=[...]; by default the task kind's):", [", ".join(sorted(EVALUATORS))]),
        "Errors in the config are one line naming the key, exit status 2, before any run starts.",
    ])  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be a function, called only when help is shown (the
    run help imports the registries, which a report does not need)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        """A usage mistake is one line too (argparse prints the usage before it)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def cmd_plot(args: argparse.Namespace) -> int:
    from .methods.registry import effective_method_settings
    from .report.figures import plot
    from .report.html import write_report

    options = {"score": args.score, "layer": args.layer, "mask": args.mask, "by": tuple(args.by),
               "settings_of": effective_method_settings}  # fmt: skip
    if args.html:
        pages = write_report(args.paths, args.out, args.html, figures=tuple(args.figure), **options)
        print("\n".join(str(p) for p in pages))
        return 0
    done = plot(args.paths, args.out, figures=tuple(args.figure), **options)
    print("\n".join(str(p) for p in done.images))
    for name, reason in done.skipped.items():
        print(f"not drawn: {name} ({reason})")
    return 0


def cmd_magnitudes(args: argparse.Namespace) -> int:
    from .analysis.magnitudes import collect, config_of, draw

    found = collect(config_of(args.config, args.overrides), args.per_task, args.split, args.layer)
    print(draw(found, args.out, args.channels, args.threshold))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .bench.evaluate import evaluate_saved
    from .bench.store import write_json

    scored = evaluate_saved(args.run_dir, args.overrides, base=args.base)
    for name, by_column in scored["scores"].items():
        cells = ", ".join(f"{column} {'–' if v is None else f'{v:.4g}'}" for column, v in by_column.items())
        print(f"{name}: {cells}")
    if args.out:
        write_json(Path(args.out), scored)
        print(args.out)
    return 0


def _suites_help() -> str:
    from .bench.forgetting import suites_help

    return suites_help()


def cmd_forgetting(args: argparse.Namespace) -> int:
    from .bench.forgetting import compare, format_table
    from .bench.store import write_json

    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name (e.g. {out / 'forgetting.json'})")
    result = compare(args.before, args.after, args.suite, args.limit, args.seed, args.adapter_base)
    print(format_table(result))
    if out is not None:
        write_json(out, result)
        print(out)
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from .report.curves import curves_figure

    for path in curves_figure(args.paths, args.out, args.learning, args.general, args.title):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``migu`` command line: every subcommand with its arguments (also read by ``migu.docgen``
    for the CLI reference of the documentation)."""
    parser = _Parser(prog="migu", description="Continual learning with MIGU.")
    parser.add_argument("--version", action="version", version=f"migu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    lazy_help: Callable[[], str] = run_help
    p_run = sub.add_parser(
        "run", help="run a task sequence (or a grid of them) from a YAML config", epilog=lazy_help,  # type: ignore[arg-type]
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p_run.add_argument("config", help="YAML file (see configs/)")
    p_run.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=3e-5 method=finetune,finetune+migu")
    p_run.add_argument("--log-with", metavar="TRACKERS", help="log to experiment trackers, comma-separated: "
                       "tensorboard (in RUN_DIR/logs), wandb, mlflow, trackio (the run setting log_with)")  # fmt: skip
    p_run.set_defaults(func=cmd_run)
    p_rep = sub.add_parser("report", help="tables from results.json files")
    p_rep.add_argument("paths", nargs="+", help="results files or folders holding them")
    p_rep.add_argument("--baseline", default=None, help="method for paired differences (default finetune; '' for none)")
    p_rep.add_argument("--matrices", action="store_true", help="also print every score matrix")
    p_rep.add_argument("--timings", action="store_true", help="also print training and evaluation time per run")
    p_rep.add_argument(
        "--score", default=None, metavar="NAME",
        help="the score matrix to table (accuracy, macro_f1, loss, perplexity, ...); default accuracy, else "
        "the runs' first score",
    )  # fmt: skip
    p_rep.add_argument(
        "--effect-of", action="append", default=[], metavar="METHOD",
        help="pair every run using METHOD with the same run without it (e.g. --effect-of migu: the "
        "paper's Table 2, each CL method with and without MIGU)",
    )  # fmt: skip
    p_rep.add_argument(
        "--by", action="append", default=[], metavar="KEY",
        help="config key that splits methods into variants, e.g. --by train.lr --by methods.migu.threshold",
    )  # fmt: skip
    p_rep.add_argument(
        "--mean-of", action="append", default=[], metavar="NAME=COL,COL",
        help="add a column NAME, the mean of the named columns, to every suite score holding them (e.g. "
        "paper3=hellaswag,winogrande,arc_challenge: the paper's general-ability mean)",
    )  # fmt: skip
    p_rep.set_defaults(func=cmd_report)
    p_plot = sub.add_parser("plot", help="figures (PNG + CSV) from results.json files and artifacts")
    p_plot.add_argument("paths", nargs="+", help="results files or folders holding them")
    p_plot.add_argument("--out", required=True, help="folder for the figures")
    p_plot.add_argument("--figure", action="append", default=[], metavar="NAME",
                        help="matrix, overlap, agreement, threshold, rates, ablation, scatter or seeds "
                        "(repeatable; default: every figure the runs allow)")  # fmt: skip
    p_plot.add_argument("--score", default="accuracy", help="score matrix to use (any name in score_matrices)")
    p_plot.add_argument("--layer", default="auto", help="overlap layer: auto (first FFN layer of the last "
                        "block), mean (over layers) or a layer name")  # fmt: skip
    p_plot.add_argument("--mask", default="ever", help="overlap of the rows updated at any step (ever) or the last")
    p_plot.add_argument("--by", action="append", default=[], metavar="KEY", help="config key splitting methods")
    p_plot.add_argument("--html", metavar="OUT.html", help="also write an offline HTML report (tables + "
                        "figures), one page per results folder")  # fmt: skip
    p_plot.set_defaults(func=cmd_plot)
    p_mag = sub.add_parser("magnitudes", help="normalised |output| per channel of a layer, per task (runs the model)")
    p_mag.add_argument("config", help="YAML file (see configs/)")
    p_mag.add_argument("overrides", nargs="*", help="key=value, e.g. model=tiny-bert data.order=order2")
    p_mag.add_argument("--out", required=True, help="folder for the figure and its CSVs")
    p_mag.add_argument("--per-task", type=int, default=5, help="examples per task")
    p_mag.add_argument("--split", default="train", help="train, test or validation")
    p_mag.add_argument("--layer", default="auto", help="auto (first FFN layer of the last block) or a layer name")
    p_mag.add_argument("--channels", type=int, default=64, help="channels shown in the left panel")
    p_mag.add_argument("--threshold", type=float, default=0.7, help="MIGU's T for the top-channel overlap")
    p_mag.set_defaults(func=cmd_magnitudes)
    p_eval = sub.add_parser("eval", help="score a finished run's saved model (save_model=true) again")
    p_eval.add_argument("run_dir", help="the run's folder (holding results.json and model/)")
    p_eval.add_argument("overrides", nargs="*", help="key=value on the run's config, e.g. "
                        "evaluators.lm_eval.limit=500")  # fmt: skip
    p_eval.add_argument("--out", help="also write the scores as JSON here")
    p_eval.add_argument("--base", action="store_true", help="score the model the run started from (as its "
                        "before-training point) instead of its saved model")  # fmt: skip
    p_eval.set_defaults(func=cmd_eval)
    p_fg = sub.add_parser("forgetting", help="did it forget? two models (names, folders, adapters) scored on one "
                          "suite, with the changes and their standard errors", epilog=_suites_help,  # type: ignore[arg-type]
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p_fg.add_argument("before", help="the model before: a name (smollm2, a cached hub id), a model folder or a "
                      "PEFT adapter folder")  # fmt: skip
    p_fg.add_argument("after", help="the model after, as BEFORE (e.g. a run's RUN_DIR/model)")
    p_fg.add_argument("--suite", default="general", help="the evaluators (below; default general)")
    p_fg.add_argument("--limit", type=int, default=None, help="at most N documents or problems per benchmark "
                      "(default: the suite's)")  # fmt: skip
    p_fg.add_argument("--out", help="also write the comparison as JSON here")
    p_fg.add_argument("--seed", type=int, default=0, help="seed of the held-out MBPP sample (a run's seed) and "
                      "of tiny test models (default 0)")  # fmt: skip
    p_fg.add_argument("--adapter-base", default=None, metavar="MODEL", help="the base model of adapter folders "
                      "(default: their adapter_config.json's base_model_name_or_path)")  # fmt: skip
    p_fg.set_defaults(func=cmd_forgetting)
    p_cur = sub.add_parser("curves", help="learning and general-ability curves per epoch (PNG + CSV)")
    p_cur.add_argument("paths", nargs="+", help="results files or folders holding them (runs with "
                       "data.evaluate_every=epoch)")  # fmt: skip
    p_cur.add_argument("--out", required=True, help="the figure, NAME.png (the CSV is written beside it)")
    p_cur.add_argument("--learning", default="pass@1", help="left panel: NAME[:COLUMN] (default pass@1)")
    p_cur.add_argument("--general", default="lm_eval/acc:mean", help="right panel: NAME[:COLUMN] (default "
                       "lm_eval/acc:mean)")  # fmt: skip
    p_cur.add_argument("--title", default=None, help="a title above both panels")
    p_cur.set_defaults(func=cmd_curves)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            return args.func(args)
    except USER_ERRORS as err:
        print(f"migu: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"migu: {stop}: every finished task (and epoch) is kept; run the same command again to resume",
              file=sys.stderr)  # fmt: skip
        return stop.exit_status


if __name__ == "__main__":
    sys.exit(main())
