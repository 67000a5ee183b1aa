"""Will this run fit? `check_fits` (what `fit` calls before allocating a weight) and `measure_training_peak`
(real training steps, to hold `tinylm.footprint`'s estimate against).

The model estimated is the one `fit` builds: `tinylm.train.setup` resolves its config for both.
"""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from torch import nn

from tinylm.config import RunConfig
from tinylm.errors import TinylmError
from tinylm.footprint import (
    Subject,
    TrainingEstimate,
    Workload,
    device_memory,
    fmt_bytes,
    largest_batch,
    model_counts,
)
from tinylm.model import GPTConfig, build_model, count_params
from tinylm.train.build import adapt, planned_model_config
from tinylm.train.loss import WithLoss, compute_loss
from tinylm.train.optim import make_optimizer


def subject_for_run(
    cfg: RunConfig, *, label: str, model: nn.Module | None = None, device: str | None = None
) -> Subject:
    """The Subject of a RunConfig: `model`, or the model `fit` would build (the tokenizer trained on the
    data if the config says so), frozen or LoRA-wrapped as configured; on `device` or the configured
    accelerator. A DPO run steps two rows per pair, beside a frozen reference copy if it keeps one."""
    t = cfg.train
    if model is None:
        with torch.device("meta"):
            model = build_model(planned_model_config(cfg))
            adapt(model, t)
    if device is None:
        accel = t.accelerator
        if accel == "auto":
            accel = "cuda" if torch.cuda.is_available() else "cpu"
        device = "cuda" if accel in ("cuda", "gpu") else "cpu"
    dpo = t.objective == "dpo"
    return Subject(
        label,
        model.config,
        batch_size=t.batch_size,
        seq_len=cfg.data.max_length,
        device=device,
        precision="32-true" if t.precision == "32" else t.precision,
        packed=cfg.data.packing,
        accumulate=t.accumulate_grad_batches,
        params=count_params(model),
        trainable=count_params(model, trainable_only=True),
        buffers=sum(b.numel() for b in model.buffers()),
        rows_per_example=2 if dpo else 1,
        reference=sum(model_counts(model.config)) if dpo and t.dpo_reference == "copy" else 0,
    )


def check_fits(cfg: RunConfig, model: nn.Module, fabric: Any) -> TrainingEstimate:
    """Print (rank 0) the training estimate of `cfg` for `model` (after freezing / LoRA) on `fabric`'s
    device, and raise TinylmError with the numbers if it cannot fit: a CUDA device's total memory, or the
    available RAM shared by this machine's CPU processes."""
    t = cfg.train
    kind = "cuda" if fabric.device.type == "cuda" else "cpu"
    subject = subject_for_run(cfg, label="run", model=model, device=kind)
    precision = subject.precision or "32-true"
    est = subject.training(precision)
    budget, what = device_memory(kind)
    share = fabric.world_size // t.num_nodes if kind == "cpu" else 1
    need = est.peak * share
    parts = ", ".join(f"{name} {fmt_bytes(v)}" for name, v in est.parts().items() if v)
    line = (
        f"memory estimate: {fmt_bytes(need)} at peak ({parts}; batch {t.batch_size} x "
        f"{cfg.data.max_length} tokens, {precision}{f', x{share} processes' if share > 1 else ''}) "
        f"of {fmt_bytes(budget)} {what}"
    )
    if fabric.is_global_zero:
        Console(stderr=True, soft_wrap=True).print(line, highlight=False)
    if need > budget:
        fits = largest_batch(lambda b: subject.training(precision, b).peak * share, budget)
        hint = f"the largest train.batch_size that fits is {fits}" if fits else "even batch 1 does not fit"
        raise TinylmError(
            f"this run does not fit in memory: it needs about {fmt_bytes(need)} at its peak (batch "
            f"{t.batch_size} x {cfg.data.max_length} tokens, {precision}) and the {kind} device has "
            f"{fmt_bytes(budget)} ({what}). {hint}; or lower data.max_length, train in bf16-mixed, freeze "
            "layers or use LoRA (`tinylm estimate-memory CONFIG` shows the parts and every precision)"
        )
    return est


def measure_training_peak(config: GPTConfig, work: Workload, *, steps: int = 2, seed: int = 0) -> int:
    """Peak bytes of real training steps of `config` as `work` says, through Fabric and our loop's loss,
    optimizer and clipping, from an empty start (the model is built inside the measurement).

    CUDA: `torch.cuda.max_memory_allocated` over the run. CPU: the PyTorch profiler's memory events (every
    allocation and free of the CPU allocator, in order), summed into a running total whose maximum is the
    peak; unlike the process's resident size this counts tensors only, and it does not depend on when the
    C allocator returns memory to the system. Two steps, so the second runs with the AdamW states present.
    """
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=work.device, devices=1, precision=work.precision)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps * work.accumulate):
        ids = torch.randint(0, config.vocab_size, (work.batch_size, work.seq_len), generator=gen)
        batch = {"input_ids": ids, "labels": ids.clone()}
        if work.packed:  # two examples per row
            batch["segment_ids"] = (torch.arange(work.seq_len) * 2 // work.seq_len).expand_as(ids).clone()
        batches.append(batch)

    def run() -> None:
        torch.manual_seed(seed)
        with fabric.init_module():
            raw = build_model(config)
        optimizer = make_optimizer(raw, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), device_type=work.device)
        model, optimizer = fabric.setup(WithLoss(raw), optimizer)
        model.train()
        for i in range(steps):
            for micro in range(work.accumulate):
                batch = {k: v.to(fabric.device) for k, v in batches[i * work.accumulate + micro].items()}
                fabric.backward(compute_loss(model, batch) / work.accumulate)
            fabric.clip_gradients(model, optimizer, max_norm=1.0, error_if_nonfinite=False)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if work.device == "cuda":
        torch._C._cuda_clearCublasWorkspaces()  # allocated again by the run, as in a fresh process
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak
