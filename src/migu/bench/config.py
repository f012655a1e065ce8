"""A run's configuration: YAML -> nested dict (+ ``key=value`` overrides) -> typed dataclasses."""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data.base import check_source
from ..settings import check_fields, check_number, from_mapping
from ..train.config import TrainConfig
from .tracking import check_log_with


@dataclass
class DataConfig:
    """Where the tasks come from and how many examples of each."""

    source: str = "cl_benchmark"
    """A name of ``migu.data.SOURCES``: ``cl_benchmark`` (local JSON), ``bbc`` (packaged
    BBC News), ``hub`` (Hugging Face), ``jsonl`` (your files, see ``migu.data.sources``), ..."""
    kind: Literal["options", "corpus", "instruction"] = "options"
    """Task kind for sources that hold several (``jsonl``): ``options``, ``corpus``, ``instruction``."""
    root: str = "../shared/data/cl_benchmark"
    """Folder of the local data (``cl_benchmark``: the 15-task benchmark with ``orders.json``;
    ``jsonl``: a folder per task); packaged sources ignore it."""
    order: Any = "order1"
    """An order name from ``orders.json`` or a list of task names (for bbc: lists of topics)."""
    replace: dict[str, str | None] = field(default_factory=dict)
    """Stand-ins for missing tasks, e.g. ``{yahoo: yelp}``; null drops one (``{yahoo: null}``: 14 tasks)."""
    n_train: int | None = 1000
    """Training examples per task, a sample seeded by ``data.seed`` (null: every example)."""
    n_test: int | None = 1000
    """Test examples per task, a seeded sample (null: every example)."""
    n_validation: int = 0
    """Validation examples per task, held out of the training data (disjoint from the training
    sample); 0: none."""
    evaluate_on: Literal["test", "validation"] = "test"
    """``test``, or ``validation`` (held out of the training data) to choose hyperparameters."""
    evaluate_tasks: Literal["all", "seen", "diagonal"] = "all"
    """``all``: every task of the sequence before training and after each task (the full accuracy
    matrix, FWT included); ``seen``: after each task only the tasks trained so far, which is all
    AA, BWT, forgetting and learning accuracy need, at about half the evaluation cost (row 0 and
    the entries above the diagonal are left empty, FWT is not computed); ``diagonal``: after each
    task only the task just trained, and every task after the last one (2T - 1 evaluations
    instead of T(T + 1): enough for AA, BWT and learning accuracy; forgetting and FWT are not
    computed)."""
    evaluate_every: Literal["task", "epoch"] = "task"
    """``task``: evaluate at task ends (the score matrices); ``epoch``: also after every epoch
    of a task, which gives learning curves (``curves`` in results.json) for long tasks."""
    seed: int | None = None
    """Seed of the example sampling; by default the run's seed."""
    with_task_name: bool = False
    """Prefix each prompt with its task name (``<task>\\n``; it leaks task identity)."""
    names_in_input: bool = False
    """Start each example's instruction with its task's category and dataset as the official
    code's collator writes them (``Task:SC\\nDataset:amazon\\n``: every script of the paper passes
    ``--add_task_name True --add_dataset_name True``). Off by default: it leaks task identity, and
    the paper's claim is about learning without task labels. ``cl_benchmark`` source only."""

    def __post_init__(self) -> None:
        check_source(self.source)
        check_fields(self, "data")  # (the Literal fields)
        for name in ("n_train", "n_test"):  # None: every example
            check_number(getattr(self, name), f"data.{name}", 1)
        check_number(self.n_validation, "data.n_validation", 0)
        if self.names_in_input and self.source != "cl_benchmark":
            raise ValueError(f"data.names_in_input: only the cl_benchmark source has the official task categories; "
                             f"data.source is {self.source!r}")  # fmt: skip
        if self.names_in_input and self.with_task_name:
            raise ValueError("data.names_in_input and data.with_task_name both prefix the input: choose one")
        if self.evaluate_on == "validation" and self.n_validation < 1:
            raise ValueError("data.evaluate_on=validation needs data.n_validation >= 1")


@dataclass
class RunConfig:
    """Everything that defines one run (one model, one method, one seed, one task order)."""

    model: str = "minilm"
    """``minilm`` or ``smollm2`` (packaged, offline), a ``tiny-*`` test model, a Hugging Face hub id
    (cached for offline use) or a local model folder."""
    method: str = "finetune"
    """Methods joined by ``+`` (``lora+replay+migu``); a list (or ``a,b`` on the command line) runs
    each in turn."""
    seed: int = 0
    """Seed of training and sampling; a list (or ``0,1,2``) runs each seed in turn."""
    protocol: str | None = None
    """The name of the protocol the run follows (``paper``: ``configs/protocols/paper.yaml``),
    recorded in results.json; ``migu report`` never pairs runs of different protocols."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings per method name, e.g. ``{migu: {threshold: 0.7}}``."""
    evaluation: Literal["generate", "rank"] = "generate"
    """Decoders: ``generate`` (greedy, exact match; the paper's metric) or ``rank`` (candidates)."""
    format: dict[str, Any] = field(default_factory=dict)
    """Options of the task format, e.g. ``{layout: pack, mask_probability: 0.15}`` for corpus
    tasks (see ``migu.formats.lm``); by default the format's own."""
    evaluators: Any = None
    """Scores to compute, by evaluator name with optional settings (``[classification]``,
    ``{lm_loss: {}, lm_eval: {limit: 100}}``); by default the task kind's: ``classification``
    (accuracy, macro-F1) for labelled options, ``lm_loss`` (loss, perplexity) for corpora and
    instruction pairs. See ``migu.evaluators``."""
    output_dir: str = "runs"
    """Folder that holds one folder per run (``results.json``, ``artifacts/``, ``state/``)."""
    save_model: bool = False
    """Save the trained model into ``RUN_DIR/model`` when the run ends (``save_pretrained``: a
    PEFT model saves its adapters, any other model its weights; the tokenizer beside it), to load
    with Transformers or PEFT. Not part of the run's identity: a finished run is not rerun for it."""
    keep_samples: bool = False
    """Keep each evaluation point's per-item results of the evaluators that have them (lm-eval's
    documents, pass@1's problems) in ``results.json`` (``samples``), so that ``migu report`` can
    give paired per-item intervals between runs. Not part of the run's identity."""
    name: str | None = None
    """Folder of the run under ``output_dir``; by default model-method-order-seed."""
    progress: bool | None = None
    """Progress bars for tasks, steps and evaluation; by default when stderr is a terminal."""
    log_with: list[str] | str = field(default_factory=list)
    """Experiment trackers to log to through Accelerate (a name or a list): ``tensorboard`` (files in
    ``RUN_DIR/logs``), ``wandb``, ``mlflow``, ``trackio`` (``migu.bench.tracking``: the config,
    each step's loss and MIGU's kept fraction, each task's scores, AA, BWT, times and the matrix
    as an image). Not part of the run's identity."""

    def __post_init__(self) -> None:
        check_fields(self, "")  # (evaluation, seed, ...: also for a config built directly)
        self.log_with = check_log_with(self.log_with, installed=False)

    def run_name(self) -> str:
        if self.name:
            return self.name
        order = self.data.order if isinstance(self.data.order, str) else "-".join(_flat(self.data.order))
        return f"{self.model}_{self.method}_{order}_seed{self.seed}".replace("/", "-")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat(items: Any) -> list[str]:
    return [x for item in items for x in _flat(item)] if isinstance(items, list | tuple) else [str(items)]


class _Loader(yaml.SafeLoader):
    """YAML as a person means it (the YAML 1.2 core schema): ``1e-4`` and ``7e-1`` are numbers
    (YAML 1.1 reads them as text), and only ``true``/``false`` are booleans (YAML 1.1 also reads
    ``yes``, ``no``, ``on``, ``off``, so ``mixed_precision: no`` would become false)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML (numbers and booleans as ``_Loader`` reads them); a syntax error
    is a one-line ValueError naming ``where``."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None


def _coerce(value: str, item: str) -> Any:
    """A ``key=value`` override's value, read as YAML (numbers, booleans, lists, null)."""
    return read_yaml(value, f"override {item!r}") if value != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``train.lr=3e-5 methods.migu.threshold=0.5 seed=1`` on a nested dict (a copy)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _coerce(value, item)
    return out


def run_config(raw: dict[str, Any]) -> RunConfig:
    """Typed, checked config from a nested dict: unknown keys and values of the wrong type are
    errors naming the dotted key (``migu.settings``), and so are the settings under ``methods``
    (``migu.methods.registry.check_method_settings``), for every method named there."""
    from ..methods.registry import check_method_settings

    raw = dict(raw or {})
    data = from_mapping(DataConfig, raw.pop("data", {}), "data")
    train = from_mapping(TrainConfig, raw.pop("train", {}), "train")
    for key in ("lr",):
        if key in raw:
            raise ValueError(f"{key!r} belongs under train: (train.{key})")
    if raw.get("methods", {}) is None:  # an empty ``methods:`` section
        raw["methods"] = {}
    config = from_mapping(RunConfig, {**raw, "data": data, "train": train})
    check_method_settings(config.methods)
    return config


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``, section by section (a copy): a mapping merges into a mapping, any
    other value (a list, a number) replaces the base's."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a nested dict. ``extends: FILE`` (or a list of files, paths relative to
    this one) lays the file's own settings over those files' settings, merged in order: a
    protocol written once (``configs/protocols/paper.yaml``) applies to every benchmark."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"config file {p} is a folder; give a YAML file (e.g. configs/quickstart.yaml)")
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file {p} is not a text (UTF-8) file; give a YAML file") from None
    raw = read_yaml(text, str(p))
    if not isinstance(raw, dict):
        raise ValueError(f"{p} must hold a mapping of settings")
    parents = raw.pop("extends", None)
    if parents is None:
        return raw
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ValueError(f"{p}: extends must be a file name or a list of file names, got {parents!r}")
    base: dict[str, Any] = {}
    for name in parents:
        parent = (p.parent / name).resolve()
        if parent in _seen or parent == p.resolve():
            raise ValueError(f"{p}: extends {name} makes a loop")
        if not parent.is_file():
            raise FileNotFoundError(f"{p}: extends {name}, which does not exist ({parent})")
        base = merge(base, load_yaml(parent, (*_seen, p.resolve())))
    return merge(base, raw)
