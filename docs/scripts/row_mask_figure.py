"""Draw docs/figures/row_mask.png: MIGU's row mask on one small linear layer, from migu's own code.

    python docs/scripts/row_mask_figure.py [--out docs/figures/row_mask.png]

A linear layer of 12 output channels (rows of its weight) over 8 inputs sees one step of two
"tasks" whose tokens use different input features (task A the first four, task B the last four),
so that different channels fire for each. ``migu.attach`` records the statistic (|x·wᵢ + bᵢ|
summed over the step's tokens, per channel), keeps the rows at or above the T-quantile (T = 0.7) and
zeroes the other rows of the weight gradient. The figure shows, for task A, the per-token
magnitudes, both tasks' statistics with their cut, and the weight gradient before and after the
mask; every number is read back from the handle and the layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

import migu

THRESHOLD = 0.7
TOKENS, INPUTS, CHANNELS = 6, 8, 12


def one_step(layer: nn.Linear, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """One MIGU step on ``tokens``: magnitudes, statistic, kept rows, gradient before and after."""
    model = nn.Sequential(layer)
    handle = migu.attach(model, threshold=THRESHOLD, fast_path=False)  # the dense gradient, then the mask
    layer.zero_grad()
    out = model(tokens)
    out.pow(2).mean().backward()
    statistic = handle.statistics()["0"].clone()
    before = layer.weight.grad.clone()
    handle.before_optimizer_step()  # what an optimizer hook runs just before optimizer.step()
    after = layer.weight.grad.clone()
    kept = handle.kept_masks()["0"][0].clone()
    handle.remove()
    return {"magnitudes": out.detach().abs(), "statistic": statistic, "kept": kept, "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "figures" / "row_mask.png"))
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = nn.Linear(INPUTS, CHANNELS)
    task_a = torch.randn(TOKENS, INPUTS) * torch.tensor([1.0] * 4 + [0.1] * 4)
    task_b = torch.randn(TOKENS, INPUTS) * torch.tensor([0.1] * 4 + [1.0] * 4)
    a, b = one_step(layer, task_a), one_step(layer, task_b)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    image = ax.imshow(a["magnitudes"].numpy(), cmap="Blues", aspect="auto")
    ax.set(title="task A: |yᵢ| = |x·wᵢ + bᵢ| per token and channel", xlabel="output channel i (row of W)",
           ylabel="token")  # fmt: skip
    fig.colorbar(image, ax=ax)

    ax = axes[0, 1]
    rows = torch.arange(CHANNELS)
    for offset, (name, step, colour) in enumerate((("task A", a, "tab:blue"), ("task B", b, "tab:orange"))):
        stat, kept = step["statistic"], step["kept"]
        ax.bar(rows + (offset - 0.5) * 0.4, stat.numpy(), width=0.4, color=colour, alpha=0.35, label=f"{name}: masked")
        ax.bar((rows + (offset - 0.5) * 0.4)[kept].numpy(), stat[kept].numpy(), width=0.4, color=colour,
               label=f"{name}: kept ({int(kept.sum())} of {CHANNELS})")  # fmt: skip
        ax.axhline(torch.quantile(stat, THRESHOLD).item(), color=colour, linestyle="--", linewidth=1)
    ax.set(title=f"statistic per channel; dashed: its {THRESHOLD}-quantile",
           xlabel="output channel i", ylabel="Σ over tokens of |yᵢ|", xticks=rows.numpy())  # fmt: skip
    ax.legend(fontsize=8)

    limit = a["before"].abs().max().item()
    for ax, key, title in ((axes[1, 0], "before", "task A: weight gradient before the mask"),
                           (axes[1, 1], "after", "task A: after the mask (masked rows are 0)")):  # fmt: skip
        image = ax.imshow(a[key].numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        labels = [f"kept {i}" if keep else str(i) for i, keep in enumerate(a["kept"].tolist())]
        ax.set(title=title, xlabel="input feature", ylabel="output channel i (row of W)", yticks=rows.numpy(),
               yticklabels=labels)  # fmt: skip
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"MIGU on one linear layer (T = {THRESHOLD}): keep the gradient rows of the most active channels")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    overlap = (a["kept"] & b["kept"]).sum().item()
    print(f"{args.out}: task A keeps rows {rows[a['kept']].tolist()}, task B {rows[b['kept']].tolist()} "
          f"({overlap} shared)")  # fmt: skip


if __name__ == "__main__":
    main()
