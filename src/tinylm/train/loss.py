"""The next-token loss the loop trains on: `WithLoss` (the model and its cross-entropy as one module, what
the loop compiles) and the token-weighted mean loss over a dataset (validation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.data.datasets import IGNORE_INDEX, TokenDataset


class WithLoss(nn.Module):
    """The model and its next-token cross-entropy as one module: what the loop compiles and runs.

    forward(input_ids, labels, segment_ids=None, reduction="mean") -> the mean loss over the tokens that
    carry loss (labels != -100), or their sum with reduction="sum".
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: Tensor, labels: Tensor, segment_ids: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        logits = self.model(input_ids, segment_ids=segment_ids)  # (B, T, V)
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction=reduction,
        )


def compute_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy of a `WithLoss` model over the tokens that carry loss."""
    return model(batch["input_ids"], batch["labels"], batch.get("segment_ids"))


@torch.no_grad()
def mean_loss(
    model: nn.Module, dataset: TokenDataset, indices: list[int], batch_size: int, fabric: Any
) -> float:
    """Token-weighted mean loss of a `WithLoss` model over `indices` of `dataset`."""
    total = torch.zeros((), device=fabric.device)
    count = torch.zeros((), device=fabric.device)
    for i in range(0, len(indices), batch_size):
        batch = {k: v.to(fabric.device) for k, v in dataset.batch(indices[i : i + batch_size]).items()}
        total += model(batch["input_ids"], batch["labels"], batch.get("segment_ids"), reduction="sum")
        count += (batch["labels"] != IGNORE_INDEX).sum()
    return (total / count.clamp(min=1)).item()
