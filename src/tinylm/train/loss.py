"""The losses the loop trains on: `WithLoss` (the model and its next-token cross-entropy as one module, what
the loop compiles), `WithDPOLoss` (the model and the DPO loss over preference pairs), and the token-weighted
mean loss over a dataset (validation). Where DPO's reference log-probabilities come from is
`tinylm.train.dpo`'s business: here they arrive in the batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.config import TrainConfig
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


def sequence_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """logits (N, T, V), labels (N, T) with -100 where nothing is scored -> (N,): each row's summed
    log-probability of its labelled tokens (for a pair's row: of the response given the prompt)."""
    N, T, V = logits.shape
    nll = F.cross_entropy(
        logits.float().view(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )  # (N*T,), 0 where ignored
    return -nll.view(N, T).sum(-1)


def dpo_loss(logps: Tensor, ref_logps: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The DPO loss of Rafailov et al. (TRL's loss_type "sigmoid"): for B pairs, `logps` and `ref_logps`
    (2B,) hold the model's and the reference's log-probabilities of the chosen responses, then the
    rejected. Returns (losses (B,), reward margins (B,)), where a pair's reward margin is
    beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))) and its loss
    -log sigmoid(margin)."""
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    margins = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margins), margins


class WithDPOLoss(nn.Module):
    """The model and the DPO loss over a batch of preference pairs (`tinylm.data.datasets.PairRows`: the
    chosen rows, then the rejected), as one module.

    forward(input_ids (2B, T), labels (2B, T), ref_logps (2B,), reduction="mean") -> the mean loss over
    the pairs; reduction="none" -> (B, 3): each pair's loss, reward margin, and log pi(chosen) -
    log pi(rejected) (detached), for validation.
    """

    def __init__(self, model: nn.Module, beta: float):
        super().__init__()
        self.model = model
        self.beta = beta

    def forward(
        self, input_ids: Tensor, labels: Tensor, ref_logps: Tensor, reduction: str = "mean"
    ) -> Tensor:
        logps = sequence_logps(self.model(input_ids), labels)  # (2B,)
        losses, margins = dpo_loss(logps, ref_logps.to(logps.dtype), self.beta)
        if reduction == "mean":
            return losses.mean()
        chosen, rejected = logps.detach().chunk(2)
        return torch.stack([losses, margins, chosen - rejected], dim=1)


def with_loss(model: nn.Module, t: TrainConfig) -> nn.Module:
    """The model wrapped with the loss of `t.objective`: what the loop compiles, sets up and steps."""
    return WithDPOLoss(model, t.dpo_beta) if t.objective == "dpo" else WithLoss(model)


def compute_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The mean loss of a `WithLoss` or `WithDPOLoss` model on a batch (which carries `ref_logps` for DPO)."""
    extra = {k: batch[k] for k in ("segment_ids", "ref_logps") if k in batch}
    return model(batch["input_ids"], batch["labels"], **extra)


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
