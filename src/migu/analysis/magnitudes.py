"""``migu magnitudes``: how strongly each output channel of a layer fires for samples of different
tasks (the observation behind MIGU; the paper's Figures 1 and 17).

For a few examples of every task of a run's sequence, the run's model (as loaded, before any
training) reads each example alone; MIGU's own statistic (``migu.core``, reduction ``mean``: the
mean |output| over the example's tokens, per output channel) is taken for every layer MIGU would
mask, and the chosen layer's vector is L1-normalised (it sums to 1 over channels). Different tasks
light up different channels if the paper is right; the top-(1 − T) channels, which MIGU would keep
updating, then overlap less between tasks than within one.

Each example is its model input alone (options: the encoder's input text or the generative prompt;
corpora: the text; instructions: the prompt). An encoder-decoder model's decoder reads only its
start token, so its layers mostly reflect the encoder through cross-attention; name an encoder layer
with ``--layer`` to see the input side.

Only the linear layers are put in training mode (MIGU records training forwards only; a linear
layer behaves the same in either mode), so dropout stays off and the numbers are deterministic.
No gradient is taken and no weight changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..report.drawing import SIZES, heat, plt, save, slug, write_csv
from ..report.figdata import default_layer, jaccard


@dataclass
class Magnitudes:
    """Normalised per-channel magnitudes of one layer: ``values[k]`` for sample ``k`` of ``tasks[k]``."""

    layer: str
    tasks: list[str]
    values: np.ndarray


def config_of(path: str | Path, overrides: list[str]) -> Any:
    """The run config of a YAML file and ``key=value`` overrides; of a grid (``method``/``seed``
    lists), the first run (magnitudes depend on the model and the data, not on the method)."""
    from ..bench import apply_overrides, load_yaml, run_config

    raw = apply_overrides(load_yaml(path), overrides)
    for key in ("method", "seed"):
        value = raw.get(key)
        if isinstance(value, str) and "," in value:
            value = value.split(",")
        if isinstance(value, list):
            raw[key] = str(value[0]).strip() if key == "method" else value[0]
    return run_config(raw)


def _text(example: Any, arch: str, with_task_name: bool) -> str:
    from ..data.prompts import render_input, render_prompt

    if hasattr(example, "options"):
        return (render_input if arch == "encoder" else render_prompt)(example, with_task_name)
    return example.prompt if hasattr(example, "prompt") else example.text


def collect(config: Any, per_task: int = 5, split: str = "train", layer: str = "auto") -> Magnitudes:
    """Run the config's model on ``per_task`` examples of each task (the first of ``split``)."""
    import torch

    from ..bench import load_tasks
    from ..core import MiguConfig, MiguHandle
    from ..models import load_model

    if per_task < 1:
        raise ValueError(f"--per-task must be at least 1; got {per_task}")
    if split not in ("train", "test", "validation"):
        raise ValueError(f"--split must be train, test or validation; got {split!r}")
    sequence = load_tasks(config)
    bundle = load_model(config.model, seed=config.seed)
    model, tokenizer = bundle.model, bundle.tokenizer
    model.eval()
    handle = MiguHandle(model, MiguConfig(threshold=0.0, reduction="mean"))
    try:
        names = {s.name: s.rows() for s in handle.sources}
        chosen = default_layer(names) if layer == "auto" else layer
        if chosen not in names:
            raise ValueError(
                f"--layer {layer!r} is not a layer MIGU masks in {config.model} (e.g. {next(iter(names))})"
            )
        for source in handle.sources:
            source.module.train()  # MIGU records training forwards; dropout elsewhere stays off
        tasks, rows = [], []
        for task in sequence:
            examples = getattr(task, split)[:per_task]
            if not examples:
                raise ValueError(f"task {task.name!r} has no {split} examples (data.n_validation?)")
            for example in examples:
                inputs = tokenizer(_text(example, bundle.arch, config.data.with_task_name), truncation=True,
                                   max_length=config.train.max_length, return_tensors="pt")  # fmt: skip
                if bundle.arch == "encoder_decoder":
                    model_config: Any = model.config
                    start = model_config.decoder_start_token_id
                    inputs["decoder_input_ids"] = torch.tensor([[start]])
                with torch.enable_grad():
                    model(**inputs)
                stat = handle.statistics()[chosen].double().numpy()
                handle.after_optimizer_step()  # ends the "step": the statistic starts again from zero
                rows.append(stat / stat.sum() if stat.sum() > 0 else stat)
                tasks.append(task.name)
    finally:
        handle.remove()
        model.eval()
    return Magnitudes(chosen, tasks, np.stack(rows))


def top_channels(values: np.ndarray, threshold: float) -> np.ndarray:
    """Per sample, the channels MIGU would keep at ``threshold``: the top ``ceil((1 - T) * n)``."""
    keep = max(1, int(np.ceil((1 - threshold) * values.shape[1])))
    masks = np.zeros(values.shape, dtype=bool)
    order = np.argsort(-values, axis=1, kind="stable")[:, :keep]
    np.put_along_axis(masks, order, True, axis=1)
    return masks


def draw(found: Magnitudes, out: str | Path, channels: int = 64, threshold: float = 0.7) -> Path:
    """Left: the mean normalised magnitude per task over the first ``channels`` channels (a dot per
    sample); right: Jaccard overlap of the top-(1 − T) channels between every pair of samples.
    CSVs beside it: every sample's full vector, and the overlap matrix."""
    if not 0 <= threshold < 1:
        raise ValueError(f"--threshold must be in [0, 1); got {threshold}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(found.tasks))
    n = min(channels, found.values.shape[1])
    fig, (ax, ax_ov) = plt.subplots(1, 2, figsize=SIZES["magnitudes"], layout="constrained",
                                    gridspec_kw={"width_ratios": [1.6, 1]})  # fmt: skip
    for k, name in enumerate(names):
        rows = found.values[[t == name for t in found.tasks], :n]
        ax.plot(range(n), rows.mean(0), color=f"C{k}", lw=1.2, label=f"{name} (mean of {len(rows)})")
        for row in rows:
            ax.scatter(range(n), row, color=f"C{k}", s=3, alpha=0.35)
    ax.set_xlabel(f"output channel (first {n} of {found.values.shape[1]})")
    ax.set_ylabel("L1-normalised mean |output|")
    ax.legend(fontsize=7)
    ax.set_title(found.layer, fontsize=9)
    masks = top_channels(found.values, threshold)
    count = len(found.tasks)
    overlap = np.array([[jaccard(masks[i], masks[j]) for j in range(count)] for i in range(count)])
    ticks = [f"{t} {k}" for k, t in enumerate(found.tasks)]
    same = np.array([[a == b for b in found.tasks] for a in found.tasks])
    off = ~np.eye(count, dtype=bool)
    within = overlap[same & off].mean() if (same & off).any() else np.nan  # pairs of samples of one task
    across = overlap[~same].mean() if (~same).any() else np.nan
    title = f"Jaccard of the top {1 - threshold:.0%} channels (T={threshold})"
    title += f"\nmean within a task {within:.2f}, across tasks {across:.2f}"
    heat(ax_ov, overlap, ticks, ticks, title, 0.0, 1.0, "{:.2f}")
    fig.suptitle("Normalised magnitude of a layer's output channels, per task", fontsize=10)
    path = out / f"magnitudes_{slug(found.layer)}.png"
    write_csv(path.with_suffix(".csv"), ["task", "sample", "channel", "normalised_magnitude"],
              [[t, k, c, float(v)] for k, (t, row) in enumerate(zip(found.tasks, found.values, strict=True))
               for c, v in enumerate(row)])  # fmt: skip
    pairs = [[i, found.tasks[i], j, found.tasks[j], overlap[i, j]] for i in range(count) for j in range(count)]
    write_csv(
        path.with_name(path.stem + "_overlap.csv"), ["sample_i", "task_i", "sample_j", "task_j", "jaccard"], pairs
    )
    return save(fig, path)
