"""A finished run's results record (``results.json``), written with its ``schema`` version
(``migu.schema``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .. import metrics
from ..data.tasks import TaskSequence
from ..methods.compose import MethodStack
from ..methods.registry import method_settings
from ..schema import SCHEMA
from .config import RunConfig
from .protocol import eval_split
from .provenance import versions
from .store import RunStore


def results_record(config: RunConfig, sequence: TaskSequence, methods: MethodStack, state: dict[str, Any],
             fingerprint: str, store: RunStore) -> dict[str, Any]:  # fmt: skip
    scores = state["scores"]
    matrices = {name: {**spec, "matrix": scores["rows"][name]} for name, spec in scores["specs"].items()}
    per_task = {n: m for n, m in matrices.items() if m["columns"] == sequence.names and "/" not in n}
    summaries = {n: summary(m) for n, m in per_task.items()}
    headline = "accuracy" if "accuracy" in summaries else next(iter(summaries), None)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": config.model,
        "method": methods.name,
        "seed": config.seed,
        "sequence": sequence.names,
        "kind": sequence.kind,
    }
    if "accuracy" in matrices:
        results["accuracy_matrix"] = matrices["accuracy"]["matrix"]
    results.update({
        "metrics": summaries.get(headline) if headline else None,
        "score_matrices": matrices,
        "score_metrics": summaries,
        "evaluated_on": config.data.evaluate_on,
        "examples": {t.name: {"train": len(t.train), "eval": len(eval_split(t, config.data.evaluate_on))}
                     for t in sequence},
        "timings": state["timings"],
        "diagnostics": state["diagnostics"],
        "artifacts": store.artifact_index(),
        "config": config.to_dict(),  # as given: what the fingerprint hashes
        # what each method ran with, defaults included (MIGU's threshold for the combination)
        "method_settings": json.loads(json.dumps(method_settings(list(methods)), default=str)),
        "versions": versions(),
        "fingerprint": fingerprint,
        "data_digest": state.get("data_digest"),
        "started": state["started"],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_at": state["resumed_at"],
        "code": state.get("code", []),
    })  # fmt: skip
    if "curves" in state:
        curves = state["curves"]
        results["curves"] = {
            "points": state["curve_points"],
            "scores": {n: {**spec, "values": curves["rows"][n]} for n, spec in curves["specs"].items()},
        }
    if "samples" in state:  # (keep_samples: per-item results of each evaluation point)
        results["samples"] = state["samples"]
    return results


def summary(matrix: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return metrics.summary(matrix["matrix"], matrix["higher_is_better"])
    except ValueError:  # a score only some rows have (e.g. a final-only end task): no CL metrics
        return None
