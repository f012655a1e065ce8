"""Per-task artifacts of a run (e.g. MIGU's kept-row masks), saved beside results.json.

Layout of ``RUN_DIR/artifacts/``::

    index.json                       {"format": 1, "items": [{"task_index", "task", "method",
                                      "name", "file"}, ...]} in the order they were written
    task01-<task>/<method>.<name>.npz one file per (task, method, artifact name)

Each ``.npz`` maps keys (for MIGU's ``kept_rows``: ``"<layer>/last"`` and ``"<layer>/ever"``, the
rows kept at the task's last step and at any step of the task) to arrays. Boolean arrays are
stored bit-packed (``numpy.packbits``) with their shape under ``"<key>.__bool_shape__"``, so a
task's masks for all of MiniLM take a few kilobytes; ``load_artifact`` unpacks them. Readable with
numpy alone (no torch, no migu): ``numpy.load(file)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
INDEX = "index.json"
_SHAPE = ".__bool_shape__"


def _folder(task_index: int, task: str) -> str:
    return f"task{task_index + 1:02d}-{task}".replace("/", "-")


def save_artifact(root: str | Path, task_index: int, task: str, method: str, name: str,
                  arrays: Mapping[str, Any]) -> Path:  # fmt: skip
    """Write one artifact (arrays, or tensors convertible with ``numpy.asarray``) and index it.
    Writes are atomic; saving the same (task, method, name) again replaces it."""
    root = Path(root)
    folder = root / _folder(task_index, task)
    folder.mkdir(parents=True, exist_ok=True)
    packed: dict[str, Any] = {}  # (Any: numpy's stubs match **packed against allow_pickle)
    for key, value in arrays.items():
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if array.dtype == np.bool_:
            packed[key] = np.packbits(array.reshape(-1))
            packed[key + _SHAPE] = np.asarray(array.shape, dtype=np.int64)
        else:
            packed[key] = array
    path = folder / f"{method}.{name}.npz"
    tmp = folder / f".{method}.{name}.tmp.npz"
    np.savez_compressed(tmp, **packed)
    os.replace(tmp, path)
    index = read_index(root)
    entry = {"task_index": task_index, "task": task, "method": method, "name": name,
             "file": str(path.relative_to(root))}  # fmt: skip
    items = [i for i in index["items"] if (i["task_index"], i["method"], i["name"]) != (task_index, method, name)]
    index["items"] = [*items, entry]
    tmp_index = root / f".{INDEX}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1))
    os.replace(tmp_index, root / INDEX)
    return path


def read_index(root: str | Path) -> dict[str, Any]:
    """The artifact index of an ``artifacts/`` folder (empty if there is none)."""
    path = Path(root) / INDEX
    if not path.is_file():
        return {"format": FORMAT, "items": []}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); delete the artifacts folder and rerun") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown artifact format {index.get('format')!r} (this migu reads {FORMAT})")
    return index


def load_artifact(path: str | Path) -> dict[str, np.ndarray]:
    """One artifact file, boolean arrays unpacked to their shape."""
    with np.load(path) as data:
        raw = {k: data[k] for k in data.files}
    out = {}
    for key, value in raw.items():
        if key.endswith(_SHAPE):
            continue
        if key + _SHAPE in raw:
            shape = tuple(int(x) for x in raw[key + _SHAPE])
            value = np.unpackbits(value, count=int(np.prod(shape))).astype(bool).reshape(shape)
        out[key] = value
    return out


def load_artifacts(run_dir: str | Path, name: str, method: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{task: arrays}`` of artifact ``name`` (e.g. ``kept_rows``) of a run folder (the one
    holding results.json), in task order; ``method`` picks one method's when several saved it."""
    root = Path(run_dir) / "artifacts"
    items = [i for i in read_index(root)["items"] if i["name"] == name and method in (None, i["method"])]
    if not items:
        raise ValueError(f"{run_dir} has no {name!r} artifacts" + (f" of method {method!r}" if method else ""))
    items.sort(key=lambda i: i["task_index"])
    return {i["task"]: load_artifact(root / i["file"]) for i in items}


def kept_row_masks(run_dir: str | Path, method: str = "migu") -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """MIGU's kept-row masks of a run: ``{task: {layer: {"last": bool[rows], "ever": bool[rows]}}}``."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for task, arrays in load_artifacts(run_dir, "kept_rows", method).items():
        layers: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            layer, _, which = key.rpartition("/")
            layers.setdefault(layer, {})[which] = value
        out[task] = layers
    return out
