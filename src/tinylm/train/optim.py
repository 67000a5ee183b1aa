"""The optimizer and the learning-rate schedule.

AdamW with two parameter groups (weight decay on matrices only: no decay on norms, biases or embeddings)
and a schedule that is a plain function of the step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D weights of Linear layers; never norms, biases or embeddings (tied weights counted once)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float], device_type: str
) -> torch.optim.AdamW:
    fused = device_type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=fused)


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to max_lr, then cosine decay to min_lr at total_steps (and min_lr after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """`warmup` < 1 is a fraction of all steps (the seed's warmup_steps_per_cent), else a step count."""
    return round(warmup * total_steps) if warmup < 1 else int(warmup)
