"""Experiment trackers for runs (``log_with: [tensorboard]``, ``migu run --log-with``), through
Accelerate's trackers (``Accelerator(log_with=...)``), from the main process only.

A run logs: its config once (flattened to ``section.key`` values); at every optimizer step the
training loss and the methods' ``step_log`` values (MIGU's ``migu/kept_fraction``); at every
evaluation point each score matrix row (``scores/<score>/<task>``), and after each task AA and
BWT of the tasks trained so far (``metrics/<score>/aa``, ``.../bwt``), its training and evaluation
seconds, and the accuracy matrix so far as an image (a matplotlib heatmap; trackers that take
images: TensorBoard and W&B as images, MLflow as a figure; Trackio has no image call). Steps are
optimizer steps counted over the whole run, so a task's values sit at its last step, and a
resumed run continues the count where its finished tasks ended. TensorBoard files go to
``RUN_DIR/logs``; W&B, MLflow and Trackio log where their own settings point (project ``migu``,
run name = the run's folder name).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics

TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
"""The trackers a run may log to, with the package each needs."""
PROJECT = "migu"


def check_log_with(names: Any, where: str = "log_with", installed: bool = True) -> list[str]:
    """``names`` as a list of known trackers (whose package is installed, with ``installed``);
    one-line errors name ``where``."""
    if names is None:
        return []
    items = [names] if isinstance(names, str) else names
    if not isinstance(items, list | tuple) or not all(isinstance(n, str) for n in items):
        raise ValueError(f"{where}: a tracker name or a list of them ({', '.join(TRACKERS)}), got {names!r}")
    out = []
    for name in items:
        if name not in TRACKERS:
            raise ValueError(f"{where}: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        if installed and importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"{where}: {name} is not installed (pip install {TRACKERS[name]})")
        if name not in out:
            out.append(name)
    return out


def hyperparameters(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """A run config as flat ``section.key`` values of the types every tracker accepts."""
    out: dict[str, bool | int | float | str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, bool | int | float | str):
            out[prefix[:-1]] = node
        else:  # lists, None, empty sections: as text
            out[prefix[:-1]] = str(node)

    walk(config, "")
    return out


def figure_array(fig: Any) -> np.ndarray:
    """A drawn matplotlib figure as an RGB image, HWC uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class RunTracker:
    """Logs one run to the accelerator's trackers (``Accelerator(log_with=..., project_dir=...)``)."""

    def __init__(self, accelerator: Any, run_name: str, config: dict[str, Any], sequence: Sequence[str],
                 steps_before: int = 0) -> None:  # fmt: skip
        self.accelerator = accelerator
        self.sequence = list(sequence)
        self.offset = steps_before  # optimizer steps of the tasks finished before this process started
        self.last_step = steps_before
        kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}, "trackio": {"name": run_name}}
        accelerator.init_trackers(PROJECT, config=hyperparameters(config), init_kwargs=kwargs)

    def step(self, step: int, values: dict[str, float]) -> None:
        """An optimizer step of the current task (``step``: its count within the task)."""
        self.last_step = self.offset + step
        self.accelerator.log({f"train/{k}": v for k, v in values.items()}, step=self.last_step)

    def evaluated(self, state: dict[str, Any], trained: dict[str, Any] | None) -> None:
        """An evaluation point has been added to ``state["scores"]`` (before training, or after a
        task, whose ``trained`` timing record is given: its steps end the task)."""
        if trained is not None:
            self.last_step = self.offset = self.offset + int(trained["steps"])
        specs, rows = state["scores"]["specs"], state["scores"]["rows"]
        values: dict[str, float] = {}
        done = len(next(iter(rows.values()), [])) - 1  # tasks trained so far
        for name, spec in specs.items():
            for column, value in zip(spec["columns"], rows[name][-1], strict=True):
                if value is not None:
                    values[f"scores/{name}/{column}"] = float(value)
            if done >= 1 and spec["columns"] == self.sequence:  # AA and BWT of the tasks trained so far
                part = [row[:done] for row in rows[name]]
                try:
                    summary = metrics.summary(part, spec["higher_is_better"])
                except ValueError:  # entries not scored at some point (evaluate_tasks: seen)
                    continue
                values[f"metrics/{name}/aa"], values[f"metrics/{name}/bwt"] = summary["aa"], summary["bwt"]
        if trained is not None:
            values["time/train_seconds"] = float(trained["seconds"])
            values["time/eval_seconds"] = float(trained.get("eval_seconds", 0.0))
            values["task"] = float(done)
        self.accelerator.log(values, step=self.last_step)
        self._matrix(specs, rows, done)

    def _matrix(self, specs: dict[str, Any], rows: dict[str, Any], done: int) -> None:
        """The accuracy matrix so far (or the first per-task score's) as an image."""
        name = "accuracy" if "accuracy" in specs else next((n for n, s in specs.items()
                                                              if s["columns"] == self.sequence), None)  # fmt: skip
        if name is None or not self.accelerator.is_main_process:
            return
        import matplotlib.pyplot as plt

        from ..report.figures import heatmap_figure

        fig = heatmap_figure(rows[name], specs[name]["columns"], f"{name} after {done} of {len(self.sequence)} tasks")
        image, key = figure_array(fig), f"matrix/{name}"
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({key: image[None]}, step=self.last_step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({key: [image]}, step=self.last_step)
            elif tracker.name == "mlflow":
                tracker.log_figure(fig, f"matrix_{name}_step{self.last_step:06d}.png")
        plt.close(fig)

    def finish(self) -> None:
        self.accelerator.end_training()


def logs_dir(run_dir: Path) -> Path:
    """Where a run's TensorBoard files go."""
    return run_dir / "logs"
