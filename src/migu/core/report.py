"""What MIGU kept, per layer, over the steps it masked: the data behind ``MiguHandle.report``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .targets import Source


@dataclass
class LayerReport:
    """What MIGU kept in one layer (one statistic source) over the steps it masked."""

    name: str
    targets: list[str]
    rows: int
    steps: int
    kept_fraction: float | None
    """Fraction of rows kept at the last masked step."""
    kept_rows: torch.Tensor | None
    """Indices of the rows kept at the last masked step (CPU, int64)."""
    ever_kept_fraction: float | None
    """Fraction of rows kept at least once since the handle was made or ``reset_report``."""
    mean_jaccard: float | None
    """Mean Jaccard similarity of the kept rows of consecutive masked steps."""


class KeptRowsLog:
    """Running per-layer record of the kept rows: last step, ever kept, consecutive overlap."""

    def __init__(self) -> None:
        self._layers: dict[str, dict[str, Any]] = {}

    def add(self, names: list[str], keep: torch.Tensor) -> None:
        """One step's selection: ``keep[k]`` holds the kept-row flags of layer ``names[k]``."""
        for row, name in enumerate(names):
            d = self._layers.setdefault(name, {"steps": 0, "jaccard_sum": 0.0, "ever": None})
            current = keep[row]
            if d["ever"] is not None:  # running sums on the device: no host synchronisation
                previous = d["last"]
                union = (current | previous).sum().clamp(min=1)
                d["jaccard_sum"] = d["jaccard_sum"] + (current & previous).sum() / union
                d["ever"] = d["ever"] | current
            else:
                d["ever"] = current.clone()
            d["last"] = current
            d["steps"] += 1

    def clear(self) -> None:
        self._layers.clear()

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The record so far, on the CPU (``load_state_dict`` continues it)."""
        return {name: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
                for name, d in self._layers.items()}  # fmt: skip

    def load_state_dict(self, state: dict[str, dict[str, Any]], device: torch.device) -> None:
        self._layers = {name: {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}
                        for name, d in state.items()}  # fmt: skip

    def masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer with at least one selection: (kept at the last step, ever kept), bool, CPU."""
        return {name: (_cpu(d["last"]), _cpu(d["ever"])) for name, d in self._layers.items()}

    def report(self, sources: list[Source]) -> dict[str, LayerReport]:
        out = {}
        for source in sources:
            d = self._layers.get(source.name)
            last = d["last"] if d else None
            out[source.name] = LayerReport(
                name=source.name,
                targets=[t.name for t in source.targets],
                rows=source.rows(),
                steps=d["steps"] if d else 0,
                kept_fraction=float(last.float().mean()) if last is not None else None,
                kept_rows=last.nonzero().flatten().cpu() if last is not None else None,
                ever_kept_fraction=float(d["ever"].float().mean()) if d else None,
                mean_jaccard=float(d["jaccard_sum"]) / (d["steps"] - 1) if d and d["steps"] > 1 else None,
            )
        return out


def kept_share(masks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """The share of all rows kept at the last step, over the layers of ``MiguHandle.kept_masks``
    (every layer's rows counted once); None before any selection."""
    rows = sum(last.numel() for last, _ in masks.values())
    return sum(int(last.sum()) for last, _ in masks.values()) / rows if rows else None


def _cpu(mask: torch.Tensor) -> torch.Tensor:
    return mask.to("cpu", copy=True)
