"""The 15-task CL benchmark as local JSON: ``<category>/<dataset>/{train,test,labels}.json``.

Dataset names are matched case-insensitively (``sst-2`` finds ``SC/SST-2``); the category
selects the instruction in ``instruction_config.json``; ``orders.json`` names the task orders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .tasks import Task, TaskSequence, make_examples, sample_splits


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _check_root(root: str | Path) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"CL benchmark data directory {path} does not exist")
    return path


def dataset_dirs(root: str | Path) -> dict[str, Path]:
    """Lower-case dataset name -> its folder, for every ``<category>/<dataset>`` with data."""
    path = _check_root(root)
    found = {}
    for folder in sorted(path.glob("*/*")):
        if folder.is_dir() and any((folder / f).exists() for f in ("train.json", "test.json", "labels.json")):
            found[folder.name.lower()] = folder
    return found


def load_orders(root: str | Path) -> dict[str, list[str]]:
    orders = _read_json(_check_root(root) / "orders.json")
    if not isinstance(orders, dict) or not all(isinstance(v, list) for v in orders.values()):
        raise ValueError(f"{Path(root) / 'orders.json'} must map order names to lists of task names")
    return orders


def _pairs(data: Any, path: Path, labels: list[str]) -> list[tuple[str, str]]:
    """Every row of a split file, each checked (also the rows a sample leaves out, so that a bad
    row is found on the first run, with its index in the file)."""
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of {{'sentence', 'label'}} objects")
    allowed = set(labels)
    out = []
    for index, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("sentence"), str) or "label" not in row:
            raise ValueError(f"{path}: example {index} needs a string 'sentence' and a 'label'")
        label = str(row["label"])
        if label not in allowed:
            raise ValueError(
                f"{path}: example {index} has label {label!r}, which is not in {path.parent / 'labels.json'} {labels}"
            )
        out.append((row["sentence"], label))
    return out


def load_task(
    root: str | Path,
    name: str,
    n_train: int | None = 1000,
    n_test: int | None = 1000,
    n_validation: int = 0,
    seed: int = 0,
    names_in_input: bool = False,
) -> Task:
    """Load one task with seeded samples of ``n_train`` training, ``n_validation`` validation
    (held out of the training file, disjoint from the training sample) and ``n_test`` test
    examples; ``None`` or more than available takes all. ``names_in_input``: the instruction
    starts with ``official_prefix`` (the task's category and dataset, as the official code writes
    them)."""
    dirs = dataset_dirs(root)
    folder = dirs.get(name.lower())
    if folder is None:
        raise ValueError(f"unknown task {name!r}: no dataset folder under {root} (found {', '.join(sorted(dirs))})")
    labels = _read_json(folder / "labels.json")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{folder / 'labels.json'} must be a non-empty JSON list of label strings")
    category = folder.parent.name
    instructions = _read_json(_check_root(root) / "instruction_config.json")
    try:
        instruction = instructions[category][0]["instruction"]
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"instruction_config.json has no instruction for category {category!r}") from err
    rng = random.Random(f"{seed}:{name.lower()}")
    train_all = _pairs(_read_json(folder / "train.json"), folder / "train.json", labels)
    test_all = _pairs(_read_json(folder / "test.json"), folder / "test.json", labels)
    for split, rows in (("train", train_all), ("test", test_all)):
        if not rows:
            raise ValueError(f"task {name!r} has an empty {split} split ({folder / (split + '.json')})")
    train, validation, test = sample_splits(train_all, test_all, n_train, n_test, n_validation, rng)
    instruction, task = instruction.strip(), name.lower()
    if names_in_input:
        instruction = official_prefix(category, folder.name) + instruction
    return Task(
        name=task,
        instruction=instruction,
        labels=tuple(labels),
        train=make_examples(train, labels, str(folder / "train.json"), instruction, task),
        test=make_examples(test, labels, str(folder / "test.json"), instruction, task),
        validation=make_examples(validation, labels, str(folder / "train.json"), instruction, task),
        category=category,
    )


def official_prefix(category: str, dataset: str) -> str:
    """What the official code's data collator puts before the instruction with
    ``--add_task_name True --add_dataset_name True`` (every script of the paper): the task's
    category and its dataset folder's name, each on a line (``Task:SC\nDataset:amazon\n``)."""
    return f"Task:{category}\nDataset:{dataset}\n"


def load_sequence(
    root: str | Path,
    order: str | list[str],
    n_train: int | None = 1000,
    n_test: int | None = 1000,
    n_validation: int = 0,
    seed: int = 0,
    replace: dict[str, str | None] | None = None,
    names_in_input: bool = False,
) -> TaskSequence:
    """Load an order by name (from ``orders.json``) or as a list of task names.

    ``replace`` maps missing tasks to stand-ins (e.g. ``{"yahoo": "yelp"}``), or to ``None`` to
    drop them from the order (``{"yahoo": None}``: orders 4-6, which hold yelp already, become 14
    tasks); the sequence's names are those actually run. Every name is checked before any file
    is read.
    """
    if isinstance(order, str):
        orders = load_orders(root)
        if order not in orders:
            raise ValueError(f"unknown order {order!r}; {Path(root) / 'orders.json'} has {', '.join(orders)}")
        names, label = orders[order], order
    else:
        names, label = list(order), "custom"
    stand_ins = {k.lower(): (v.lower() if isinstance(v, str) else v) for k, v in (replace or {}).items()}
    for key, value in stand_ins.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"replace={{{key!r}: {value!r}}}: a stand-in is a task name, or null to drop the task")
    mapped = [stand_ins.get(n.lower(), n.lower()) for n in names]
    names = [n for n in mapped if n is not None]
    if not names:
        raise ValueError(f"order {label!r}: replace drops every task")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"order {label!r} would hold {repeated} twice after replace={stand_ins}: a stand-in already in the "
            f"order repeats it (replace={{...: null}} drops a task instead)"
        )
    available = dataset_dirs(root)
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"unknown task(s) {missing} in order {label!r}: not found under {root} "
            f"(use replace={{'{missing[0]}': ...}} to stand in another task, or null to drop it)"
        )
    tasks = [load_task(root, n, n_train, n_test, n_validation, seed, names_in_input) for n in names]
    return TaskSequence(label, tasks)
