"""Row scores other than MIGU's magnitude: what a layer's rows are ranked by.

MIGU ranks a layer's rows by ``|output|`` summed over the step's tokens (``statistics``); the
engine (grad and update modes, the kept-rows record, reports) is the same for every score, which
only answers "how important is each row now":

- ``magnitude`` (MIGU) and ``random`` (the control): from the forward statistic, per step;
- ``gradient``: the squared L2 norm of each row of the step's own weight gradient, per step
  (importance from the loss rather than from activations);
- ``given``: scores set from outside (``MiguHandle.set_row_scores``), e.g. a diagonal Fisher
  estimated once per task (FGGM), kept until replaced.

Every score keeps the top ``1 - T`` rows of each layer (``selection.magnitude_keep``); a source
with several targets (LoRA's combined layer) sums its targets' scores.
"""

from __future__ import annotations

import torch

from .targets import Source


def row_sums(values: torch.Tensor, rows_last: bool) -> torch.Tensor:
    """A weight-shaped tensor summed over the input dimension: one value per output row, fp32."""
    values = values.full_tensor() if hasattr(values, "full_tensor") else values  # (an FSDP2 DTensor)
    return values.float().sum(dim=0 if rows_last else 1)


def gradient_rows(source: Source) -> torch.Tensor:
    """Per row of ``source``: the squared L2 norm of its targets' weight-gradient rows, summed
    (zeros for a layer without gradient: every row ties, and there is nothing to mask)."""
    total: torch.Tensor | None = None
    for target in source.targets:
        grad = target.weight.grad
        if grad is None:
            continue
        rows = row_sums(grad.detach().pow(2), target.rows_last)
        total = rows if total is None else total + rows.to(total.device)
    if total is None:  # a layer the loss does not reach (an unused pooler): nothing to mask
        return torch.zeros(source.rows(), device=source.targets[0].weight.device)
    return total
