"""DPO's reference model for the loop: log-probabilities of the `init_from` model, either computed once
before the first step into the datasets (`precomputed`) or from a frozen copy of that model run on every
batch (`copy`); and the validation metrics of a DPO run (loss, reward margin, accuracies).

The loss itself is `tinylm.train.loss.WithDPOLoss`; this module only supplies what it compares against.
Both ways give the same numbers: the reference is the `init_from` model in eval mode, in the run's
precision. A resumed run gets its precomputed values back from the checkpoint's trainer state, since the
model it resumes is no longer the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tinylm.checkpoint import WEIGHTS_FILE, is_hf_checkpoint, load_weights
from tinylm.config import RunConfig
from tinylm.data.datasets import PairRows
from tinylm.errors import CheckpointError
from tinylm.hf_model import HFModelConfig
from tinylm.model import GPTConfig, build_model
from tinylm.train.build import hf_model, init_path
from tinylm.train.loss import sequence_logps


@torch.no_grad()
def reference_logps(model: nn.Module, batch: dict[str, Tensor], fabric: Any) -> Tensor:
    """The reference's log-probabilities of each row's response: (2B,) for a batch of B pairs."""
    with fabric.autocast():
        logits = model(batch["input_ids"])  # (2B, T, V)
    return sequence_logps(logits, batch["labels"])


def frozen_copy(
    cfg: RunConfig, model_cfg: GPTConfig | HFModelConfig, fabric: Any, dtype: torch.dtype
) -> nn.Module:
    """The `init_from` model, built afresh (also when the run resumes) on the device in the trained
    model's `dtype`, in eval mode, with no gradients: the reference of `dpo_reference: copy`."""
    init = init_path(cfg)
    assert init is not None, "a DPO config names init_from (config.py checks it)"
    if is_hf_checkpoint(init):
        ref = hf_model(cfg, init).to(fabric.device)
    else:
        assert isinstance(model_cfg, GPTConfig)
        with fabric.init_module():
            ref = build_model(model_cfg)
        load_weights(ref, init / WEIGHTS_FILE, device=fabric.device)
    return ref.to(dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def precompute(model: nn.Module, datasets: list[PairRows], batch_size: int, fabric: Any) -> None:
    """Set `ref` (N, 2) of every dataset: `model`'s log-probabilities of each chosen and rejected
    response, in eval mode (before the first step `model` is the reference)."""
    was_training = model.training
    model.eval()
    for data in datasets:
        data.ref = None  # batches without reference values
        parts = []
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            batch = {k: v.to(fabric.device) for k, v in data.batch(idx).items()}
            chosen, rejected = reference_logps(model, batch, fabric).float().chunk(2)
            parts.append(torch.stack([chosen, rejected], dim=1).cpu())
        data.ref = torch.cat(parts)
    model.train(was_training)


def restore_precomputed(saved: Any, datasets: dict[str, PairRows | None], where: str) -> None:
    """Put the reference values a checkpoint saved (`saved_precomputed`) back into the datasets."""
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{where}: holds no DPO reference log-probabilities (it is not from a run with train.objective "
            "dpo and dpo_reference precomputed); resume from a checkpoint of this run, or start a new out_dir"
        )
    for name, data in datasets.items():
        ref = saved.get(name)
        if data is None:
            continue
        if not isinstance(ref, Tensor) or tuple(ref.shape) != (len(data), 2):
            found = tuple(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__
            raise CheckpointError(
                f"{where}: its reference log-probabilities for the {name} pairs are {found}, this run has "
                f"{len(data)} pairs; resume with the data it was trained on, or start a new out_dir"
            )
        data.ref = ref.float()


def saved_precomputed(datasets: dict[str, PairRows | None]) -> dict[str, Tensor | None]:
    """The precomputed reference values, as the trainer state keeps them."""
    return {name: None if data is None else data.ref for name, data in datasets.items()}


@torch.no_grad()
def pair_metrics(
    model: nn.Module,
    dataset: PairRows,
    indices: list[int],
    batch_size: int,
    fabric: Any,
    reference: nn.Module | None,
) -> dict[str, float]:
    """Over the pairs `indices` of `dataset` (every process the same), for a `WithDPOLoss` model: the mean loss (`val_loss`), the
    mean reward margin (`val_dpo_margin`), the share of pairs with a positive margin (`val_dpo_accuracy`,
    TRL's rewards/accuracies), and the share whose chosen response the model finds more likely than the
    rejected one (`val_dpo_chosen_likelier`)."""
    rows = []
    for i in range(0, len(indices), batch_size):
        batch = {k: v.to(fabric.device) for k, v in dataset.batch(indices[i : i + batch_size]).items()}
        if reference is not None:
            batch["ref_logps"] = reference_logps(reference, batch, fabric)
        rows.append(model(batch["input_ids"], batch["labels"], batch["ref_logps"], reduction="none"))
    per_pair = torch.cat(rows).float()  # (n, 3): loss, margin, log pi(chosen) - log pi(rejected)
    return {
        "val_loss": per_pair[:, 0].mean().item(),
        "val_dpo_margin": per_pair[:, 1].mean().item(),
        "val_dpo_accuracy": (per_pair[:, 1] > 0).float().mean().item(),
        "val_dpo_chosen_likelier": (per_pair[:, 2] > 0).float().mean().item(),
    }
