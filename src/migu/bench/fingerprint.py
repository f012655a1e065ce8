"""What identifies a run: a hash of its config (``config_fingerprint``) and of its data
(``TaskSequence.digest``, kept as ``data_digest``). A finished or interrupted run is taken as this
config's only when both match; settings added to migu later leave old fingerprints unchanged at
their defaults, so that runs of earlier versions are still recognised."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .config import RunConfig

# Settings added after results existed: at these values they leave a run's fingerprint as it was,
# so that finished and interrupted runs of earlier versions are still recognised.
_ADDED_LATER: dict[tuple[str | None, str], Any] = {
    ("data", "evaluate_tasks"): "all",
    ("data", "kind"): "options",
    ("data", "evaluate_every"): "task",
    ("train", "dropout"): None,
    ("train", "optim"): "adamw_torch",
    ("data", "names_in_input"): False,
    (None, "protocol"): None,
    (None, "evaluators"): None,
    (None, "format"): {},
}


_NOT_IDENTITY = ("progress", "output_dir", "save_model", "log_with", "keep_samples")


def config_fingerprint(config: RunConfig, with_data_root: bool = False) -> str:
    """What identifies a run's results: a hash of its config without the keys that do not change
    them (progress bars, output folder, keeping the model, trackers, and where the data was read from: the
    data itself is identified by ``TaskSequence.digest``, so a run resumes with its data moved).
    ``with_data_root``: the fingerprint of runs before 2026-12-02, which hashed ``data.root``."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IDENTITY}
    for (section, key), value in _ADDED_LATER.items():
        node = settings if section is None else settings[section]
        if key in node and node[key] == value:
            node.pop(key)
    if not with_data_root:
        settings["data"].pop("root", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint_matches(saved: dict[str, Any], config: RunConfig) -> bool:
    """Whether a saved state or results file is a run of ``config`` (either fingerprint form)."""
    return saved.get("fingerprint") in (config_fingerprint(config), config_fingerprint(config, with_data_root=True))


def same_data(saved: dict[str, Any], digest: str, where: Path) -> None:
    """Refuse a run folder whose saved run read other data (files from before 2026-12-02 have no
    digest: their fingerprint holds ``data.root``)."""
    if saved.get("data_digest") not in (None, digest):
        raise ValueError(f"{where} holds a run on other data (data.root or the files in it changed); "
                         "choose another output_dir or name, or delete that folder")  # fmt: skip
