"""What every figure of ``migu plot`` shares: the headless backend, sizes, saving, the CSV beside it."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

DPI = 100
# (width, height) in inches; pixels = inches * DPI. The overlap figure is OVERLAP_PANEL wide per run.
SIZES = {"matrix": (6.4, 4.8), "threshold": (10.0, 4.2), "ablation": (10.0, 4.6), "scatter": (9.6, 5.4),
         "seeds": (9.0, 5.0), "magnitudes": (12.0, 4.8), "agreement": (8.0, 4.8), "rates": (8.0, 5.4)}  # fmt: skip
OVERLAP_PANEL = (4.2, 7.6)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "run"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV beside a figure; floats as written by ``repr`` (exact), None and NaN as empty cells."""

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return repr(float(v)) if isinstance(v, float | np.floating) else v

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([cell(v) for v in row] for row in rows)
    return path


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def heat(ax: Any, values: np.ndarray, rows: list[str], cols: list[str], title: str, vmin: float | None = None,
          vmax: float | None = None, fmt: str = "{:.1f}") -> None:  # fmt: skip
    """A heatmap of ``values`` on ``ax`` with a colour bar, and the numbers in the cells while legible."""
    masked = np.ma.masked_invalid(values)
    image = ax.imshow(masked, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    lo, hi = image.get_clim()
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v) and len(rows) * len(cols) <= 144:  # numbers in the cells while they are legible
            light = (v - lo) / (hi - lo or 1) < 0.5
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if light else "black")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
