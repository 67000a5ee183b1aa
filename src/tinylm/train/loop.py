"""`fit(config)`: the training loop, on Lightning Fabric. Setup → loop → save, read top to bottom.

Fabric owns the accelerator, devices, precision, the distributed strategy (DDP/FSDP), and process launch
(also under torchrun). The loop itself is ours: gradient accumulation, clipping, the learning-rate schedule,
validation, logging, checkpoints and exact resume. There is no host sync per step: the loss is read back
only every `log_every_n_steps`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from tinylm.checkpoint import (
    RUN_CONFIG_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    CheckpointManager,
    is_hf_checkpoint,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from tinylm.config import RunConfig, TrainConfig, dump_config
from tinylm.data.datasets import BatchLoader, PairRows, TokenDataset, eval_indices
from tinylm.errors import CheckpointError, TinylmError
from tinylm.files import write_text_atomic
from tinylm.hf_model import HFModelConfig
from tinylm.model import GPTConfig, build_model, count_params
from tinylm.templates import layout_prompt
from tinylm.tokenizers import Tokenizer, load_tokenizer
from tinylm.train import dpo
from tinylm.train.build import adapt, hf_model, init_path, model_config
from tinylm.train.data import Prepared, prepare, resolve_resume
from tinylm.train.fits import check_fits
from tinylm.train.loggers import CSVLog, Loggers, TensorBoardLog, WandbLog
from tinylm.train.loss import compute_loss, mean_loss, with_loss
from tinylm.train.optim import lr_at, make_optimizer, warmup_steps_for
from tinylm.train.progress import Progress
from tinylm.train.rundir import claim_run_dir

console = Console(stderr=True, soft_wrap=True)


@dataclass
class TrainState:
    """Everything beyond weights and optimizer that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # micro-batches consumed in the current epoch
    latest: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    """One run as `setup` builds it: what `train` steps and `save_step` writes."""

    cfg: RunConfig
    fabric: Any
    resume_from: Path | None
    data: Prepared
    raw_model: nn.Module  # the model itself: what is saved
    model_cfg: GPTConfig | HFModelConfig
    model: nn.Module  # `with_loss(raw_model)`, compiled if asked, set up by Fabric: what is stepped
    optimizer: Any
    loader: BatchLoader
    val_set: TokenDataset | None
    val_idx: list[int]
    total_steps: int
    val_every: int
    manager: CheckpointManager
    loggers: Loggers
    launched: float
    state: TrainState = field(default_factory=TrainState)
    reference: nn.Module | None = None  # DPO with `dpo_reference: copy`: the frozen init_from model

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.data.tokenizer


def fit(cfg: RunConfig) -> Path:
    """Train as `cfg` says; returns the run directory (checkpoints in RUN_DIR/checkpoints)."""
    run = setup(cfg)
    train(run)
    finish(run)
    return run.run_dir


# ----------------------------------------------------------------------------------------------------------
# Setup: processes, the run folder, data, model, optimizer, schedule, resume


def setup(cfg: RunConfig) -> Run:
    """Launch the processes, claim the run folder, build data, model and optimizer, restore a resumed
    run's state, and print what is about to run (rank 0)."""
    fabric, resume_from = _launch(cfg)
    launched = time.perf_counter()
    data, raw_model, model_cfg = _data_and_model(cfg, fabric, resume_from)
    t = cfg.train
    optimizer = make_optimizer(
        raw_model,
        lr=t.learning_rate,
        weight_decay=t.weight_decay,
        betas=t.betas,
        device_type=fabric.device.type,
    )
    if fabric.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = with_loss(raw_model, t)  # compiled with the model, the loss fuses with the head: no fp32 logits
    model = torch.compile(model) if t.compile else model
    model, optimizer = fabric.setup(model, optimizer)
    limit = _overfit_limit(t.overfit_batches, len(data.train), t.batch_size * fabric.world_size)
    loader = BatchLoader(
        data.train,
        t.batch_size,
        shuffle=limit is None,
        seed=cfg.seed,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
        limit=limit,
    )
    val_set = data.train if limit is not None else data.val
    steps_per_epoch = math.ceil(len(loader) / t.accumulate_grad_batches)
    total_steps = t.max_steps if t.max_steps is not None else t.max_epochs * steps_per_epoch
    if t.max_steps is not None and t.max_epochs is not None:
        total_steps = min(total_steps, t.max_epochs * steps_per_epoch)
    run_dir = Path(cfg.out_dir)
    run = Run(
        cfg=cfg,
        fabric=fabric,
        resume_from=resume_from,
        data=data,
        raw_model=raw_model,
        model_cfg=model_cfg,
        model=model,
        optimizer=optimizer,
        loader=loader,
        val_set=val_set,
        val_idx=_val_indices(val_set, limit, t.eval_batches * t.batch_size),
        total_steps=total_steps,
        val_every=_val_every(t.val_check_interval, steps_per_epoch),
        manager=CheckpointManager(
            run_dir / "checkpoints",
            monitor=cfg.checkpoint.monitor,
            mode=cfg.checkpoint.mode,
            save_top_k=cfg.checkpoint.save_top_k,
        ),
        loggers=_make_loggers(cfg, run_dir) if fabric.is_global_zero else Loggers([]),
        launched=launched,
    )
    if t.objective == "dpo":
        _set_up_reference(run)
    if resume_from is not None:
        _restore(resume_from, run)
        if fabric.is_global_zero:
            CSVLog(run_dir).truncate_after(run.state.step)
    if fabric.is_global_zero:
        write_text_atomic(run_dir / RUN_CONFIG_FILE, dump_config(cfg))
        _announce(run)
    return run


def _launch(cfg: RunConfig) -> tuple[Any, Path | None]:
    """Fabric started (every process), the run folder claimed (rank 0) and the seed set; the checkpoint to
    resume from, if any."""
    from lightning.fabric import Fabric

    t = cfg.train
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=_precision(t),
    )
    fabric.launch()
    run_dir = Path(cfg.out_dir)
    resume_from = resolve_resume(cfg.checkpoint.resume, run_dir / "checkpoints")
    if resume_from is not None and not resume_from.exists():
        raise TinylmError(f"checkpoint.resume: {resume_from} does not exist")
    if fabric.is_global_zero:  # refuses a folder holding another run; clears what killed saves left
        for note in claim_run_dir(run_dir, resume_from):
            console.print(f"out_dir: {note}", highlight=False)
    fabric.barrier()
    fabric.seed_everything(cfg.seed, verbose=False)
    return fabric, resume_from


def _data_and_model(
    cfg: RunConfig, fabric: Any, resume_from: Path | None
) -> tuple[Prepared, nn.Module, GPTConfig | HFModelConfig]:
    """The tokenized data and the model on the device: resumed, from `init_from`, or new; checked to fit
    in memory before a single weight is allocated; frozen or LoRA-wrapped as configured."""
    init = init_path(cfg)
    source = resume_from or init
    data = prepare(cfg, load_tokenizer(source / TOKENIZER_DIR) if source else None)
    model_cfg: GPTConfig | HFModelConfig
    if source is not None and is_hf_checkpoint(source):  # runs through transformers (tinylm.hf_model)
        raw_model = hf_model(cfg, source).to(fabric.device)  # resumed or pretrained weights
        model_cfg = raw_model.config
    else:
        model_cfg = model_config(cfg, init, data.tokenizer.vocab_size)
        with torch.device("meta"):  # shapes only: the memory check sees the model before it exists
            probe = build_model(model_cfg)
            adapt(probe, cfg.train)
        check_fits(cfg, probe, fabric)
        with fabric.init_module():
            raw_model = build_model(model_cfg)
        if init is not None and resume_from is None:
            load_weights(raw_model, init / WEIGHTS_FILE, device=fabric.device)
    adapt(raw_model, cfg.train)
    return data, raw_model, model_cfg


def _set_up_reference(run: Run) -> None:
    """DPO's reference: the frozen copy of the init_from model, or its log-probabilities precomputed into
    the datasets now, while the model is still the init_from model (a resumed run restores them)."""
    t = run.cfg.train
    if t.dpo_reference == "copy":
        dtype = next(run.raw_model.parameters()).dtype
        run.reference = dpo.frozen_copy(run.cfg, run.model_cfg, run.fabric, dtype)
    elif run.resume_from is None:
        sets = [d for d in _pair_sets(run).values() if d is not None]
        dpo.precompute(run.raw_model, sets, t.batch_size, run.fabric)


def _pair_sets(run: Run) -> dict[str, PairRows | None]:
    """A DPO run's datasets, by the names its trainer state keeps their reference values under."""
    assert isinstance(run.data.train, PairRows), "objective dpo prepares PairRows"
    return {"train": run.data.train, "val": run.data.val if isinstance(run.data.val, PairRows) else None}


def _announce(run: Run) -> None:
    """Rank 0's first lines: the model's size, the batches, steps and processes, and the data."""
    n, trainable = count_params(run.raw_model), count_params(run.raw_model, trainable_only=True)
    fabric = run.fabric
    console.print(
        f"[bold]tinylm train[/] {n:,} parameters ({n / 1e6:.2f}M), {trainable:,} trainable "
        f"({trainable / n:.1%}), {len(run.loader)} batches/epoch, {run.total_steps} steps, "
        f"{fabric.world_size} process(es) on {fabric.device.type}, precision {_precision(run.cfg.train)}"
        + (f"; resumed at step {run.state.step} from {run.resume_from}" if run.resume_from else "")
    )
    console.print(f"data: {_fmt_stats(run.data.stats)}")
    t = run.cfg.train
    if t.objective == "dpo":
        console.print(f"objective: DPO, beta {t.dpo_beta}, reference {t.dpo_reference} ({run.cfg.init_from})")


def _precision(t: TrainConfig) -> str:
    return "32-true" if t.precision == "32" else t.precision


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(run: Run) -> None:
    """Step until `total_steps` (or until the val loss reaches `stop_at_val_loss`): accumulate, clip,
    step; log, validate and checkpoint on their intervals."""
    cfg, t, state = run.cfg, run.cfg.train, run.state
    if run.val_set is not None and t.num_sanity_val_steps > 0 and state.step == 0:
        validate(run, t.num_sanity_val_steps)
    warmup = warmup_steps_for(t.warmup, run.total_steps)
    min_lr = t.min_lr if t.min_lr is not None else t.learning_rate / 10
    progress = Progress(run.total_steps, enabled=run.fabric.is_global_zero, start=state.step)
    if run.val_set is not None and t.objective == "dpo" and state.step == 0:
        metrics = _validation(run)  # where the reward margin and accuracies start, logged at step 0
        if run.fabric.is_global_zero:
            progress.console.print(f"step 0: {_val_summary(metrics)}", highlight=False)
            progress.shown(state.latest)
    batches = _batch_stream(run.loader, state)
    window = _Window(torch.zeros((), device=run.fabric.device))
    run.model.train()
    while state.step < run.total_steps:
        lr = lr_at(
            state.step,
            max_lr=t.learning_rate,
            min_lr=min_lr,
            warmup_steps=warmup,
            total_steps=run.total_steps,
        )
        _step(run, batches, lr, window)
        is_last = state.step == run.total_steps
        if state.step % t.log_every_n_steps == 0 or is_last:
            _log_window(run, lr, window)
        paused = time.perf_counter()  # validation and saving are not training throughput
        reached = _validate_and_save(run, is_last, progress)
        every = cfg.checkpoint.every_n_train_steps
        if (every and state.step % every == 0) or ((is_last or reached) and cfg.checkpoint.save_last):
            checkpoint(run, None, last=True)
        window.t0 += time.perf_counter() - paused
        progress.update(state.step, state.latest)
        if reached:
            break
    progress.close()


@dataclass
class _Window:
    """The steps since the last log line: their summed loss (on the device), tokens and start time."""

    loss_sum: torch.Tensor
    t0: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    steps: int = 0


def _step(run: Run, batches: Any, lr: float, window: _Window) -> None:
    """One optimizer step over `accumulate_grad_batches` micro-batches, at learning rate `lr`."""
    t, fabric, model, optimizer = run.cfg.train, run.fabric, run.model, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    for micro in range(t.accumulate_grad_batches):
        batch = {k: v.to(fabric.device, non_blocking=True) for k, v in next(batches).items()}
        if run.reference is not None:
            batch["ref_logps"] = dpo.reference_logps(run.reference, batch, fabric)
        with fabric.no_backward_sync(model, enabled=micro < t.accumulate_grad_batches - 1):
            loss = compute_loss(model, batch) / t.accumulate_grad_batches
            fabric.backward(loss)
        window.loss_sum += loss.detach()
        window.tokens += batch["input_ids"].numel() * fabric.world_size
    if t.grad_clip is not None:
        fabric.clip_gradients(model, optimizer, max_norm=t.grad_clip, error_if_nonfinite=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    window.steps += 1


def _log_window(run: Run, lr: float, window: _Window) -> None:
    """Read the loss back (the one host sync), log the window's loss, lr and throughput, start a new one."""
    elapsed = time.perf_counter() - window.t0
    train_loss = run.fabric.all_reduce(window.loss_sum, reduce_op="mean").item() / window.steps
    metrics = {"train_loss": train_loss, "lr": lr, "tokens_per_sec": window.tokens / max(elapsed, 1e-9)}
    run.state.latest.update(metrics)
    run.loggers.log({**metrics, "epoch": run.state.epoch}, run.state.step)
    window.loss_sum.zero_()
    window.t0, window.tokens, window.steps = time.perf_counter(), 0, 0


def _validate_and_save(run: Run, is_last: bool, progress: Progress) -> bool:
    """Validate on its interval and save a new top-k checkpoint; True when the val loss reached
    `stop_at_val_loss` (rank 0 decides, so that every process stops together)."""
    cfg, t, state = run.cfg, run.cfg.train, run.state
    if run.val_set is None:
        if state.step % t.log_every_n_steps == 0 or is_last:
            checkpoint(run, state.latest.get(cfg.checkpoint.monitor), last=False)
        return False
    if not (state.step % run.val_every == 0 or is_last):
        return False
    metrics = _validation(run)
    progress.note(f"step {state.step}: {_val_summary(metrics)}")
    checkpoint(run, state.latest.get(cfg.checkpoint.monitor), last=False)
    if t.stop_at_val_loss is None:
        return False
    return bool(run.fabric.broadcast(metrics["val_loss"] <= t.stop_at_val_loss, src=0))


def _validation(run: Run) -> dict[str, float]:
    """Validate at this step (in eval mode), and log the metrics with the time so far."""
    run.model.eval()
    metrics = {**validate(run), "elapsed_s": time.perf_counter() - run.launched, "unix_time": time.time()}
    run.model.train()
    run.state.latest.update(metrics)
    run.loggers.log(metrics, run.state.step)
    return metrics


VAL_SUMMARY = ("val_loss", "val_dpo_margin", "val_dpo_accuracy", "val_dpo_chosen_likelier")


def _val_summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in VAL_SUMMARY if k in metrics)


def validate(run: Run, max_batches: int | None = None) -> dict[str, float]:
    """Validation loss and perplexity (over the first `max_batches` for the sanity check), or for DPO the
    loss, reward margin and accuracies (`dpo.pair_metrics`), and, when asked for, BLEU/ROUGE/EM of greedy
    answers to the validation examples."""
    t = run.cfg.train
    idx = run.val_idx if max_batches is None else run.val_idx[: max_batches * t.batch_size]
    if t.objective == "dpo":
        metrics = dpo.pair_metrics(run.model, run.val_set, idx, t.batch_size, run.fabric, run.reference)
    else:
        loss = mean_loss(run.model, run.val_set, idx, t.batch_size, run.fabric)
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
    if t.compute_metrics and run.data.val_examples and max_batches is None:
        examples = run.data.val_examples[: t.metric_examples]
        metrics |= generation_metrics(run.raw_model, run.tokenizer, examples, run.cfg)
    return metrics


def finish(run: Run) -> None:
    """Close the progress display's companions (loggers) and print the summary (rank 0)."""
    run.loggers.close()
    if not run.fabric.is_global_zero:
        return
    state, t = run.state, run.cfg.train
    summary = ", ".join(f"{k} {v:.4f}" for k, v in state.latest.items() if k in ("train_loss", *VAL_SUMMARY))
    if state.step < run.total_steps:
        console.print(f"step {state.step}: val_loss reached stop_at_val_loss {t.stop_at_val_loss}")
    console.print(f"done: step {state.step}, {summary}; checkpoints in {run.manager.root}")


# ----------------------------------------------------------------------------------------------------------
# Save


def checkpoint(run: Run, value: float | None, *, last: bool) -> None:
    """Rank 0 saves this step (once) if `value` of the monitored metric is a new top-k or `last` is asked
    for; every rank waits at the barrier, so all ranks take the same path."""
    manager, state = run.manager, run.state
    if run.fabric.is_global_zero and (last or (value is not None and manager.improves(value))):
        if manager.step_dir(state.step).name not in manager.written:  # best and last: one save
            save_step(run)
        manager.record(state.step, value, last=last)
    run.fabric.barrier()


def save_step(run: Run) -> None:
    """Write this step's checkpoint: weights (LoRA merged), config, tokenizer, and the trainer state that
    an exact resume needs (optimizer, data position, best-k bookkeeping, RNG)."""
    cfg, state = run.cfg, run.state
    meta = {
        "step": state.step,
        "metrics": dict(state.latest),
        "prompt_template": cfg.data.prompt_template,
        "data_kind": cfg.data.kind,
        "generation": cfg.generation.model_dump(),
    }
    trainer_state = {
        "optimizer": run.optimizer.state_dict(),
        "state": {"step": state.step, "epoch": state.epoch, "batch": state.batch},
        "latest": dict(state.latest),
        "manager": run.manager.state_dict(),
        "rng": _rng_state(),
    }
    if cfg.train.objective == "dpo" and cfg.train.dpo_reference == "precomputed":
        trainer_state["dpo_reference"] = dpo.saved_precomputed(_pair_sets(run))
    save_checkpoint(
        run.manager.step_dir(state.step),
        model=_weights_to_save(run.raw_model, cfg.train),
        config=run.model_cfg,
        tokenizer=run.tokenizer,
        meta=meta,
        trainer_state=trainer_state,
        run_config=dump_config(cfg),
    )


def _weights_to_save(model: nn.Module, t: TrainConfig) -> nn.Module:
    """The plain GPT to write: with LoRA, a copy with the adapters merged into the weights."""
    if t.lora is None:
        return model
    from tinylm.train.lora import merge_lora

    return merge_lora(copy.deepcopy(model))


@torch.no_grad()
def generation_metrics(model: nn.Module, tokenizer, examples: list, cfg: RunConfig) -> dict[str, float]:
    """Greedy answers for `examples`, in batches of 8, scored against their references (BLEU, ROUGE, EM)."""
    from tinylm.evaluate import MetricAccumulator
    from tinylm.generate.detok import reply_text
    from tinylm.generate.engine import generate_batch

    acc = MetricAccumulator()
    block = model.config.block_size
    stop_ids = [tokenizer.eos_id]
    for start in range(0, len(examples), 8):
        chunk = examples[start : start + 8]
        prompts = [
            tokenizer.encode(layout_prompt(e.prompt, cfg.data.prompt_template, tokenizer))[-block // 2 :]
            for e in chunk
        ]
        rows = generate_batch(
            model,
            prompts,
            max_new_tokens=cfg.generation.max_new_tokens,
            block_size=block,
            stop_ids=stop_ids,
        )
        texts = [
            reply_text(tokenizer, r.tokens, stop=cfg.generation.stop, stop_ids=stop_ids)[0] for r in rows
        ]
        replies = [t.strip() for t in texts]
        acc.add(replies, [e.response for e in chunk])
    return {f"val_{k}": v for k, v in acc.compute().items() if k != "count"}


def _batch_stream(loader: BatchLoader, state: TrainState):
    """Endless micro-batches from the saved data position; keeps state.epoch/state.batch current."""
    while True:
        for batch in loader.iterate(state.epoch, state.batch):
            state.batch += 1
            yield batch
        state.epoch += 1
        state.batch = 0


def _overfit_limit(overfit: int | float, n: int, global_batch: int) -> int | None:
    """Lightning's overfit_batches: an int is a number of batches, a float a fraction of the data."""
    if not overfit:
        return None
    if isinstance(overfit, float) and overfit < 1:
        return max(global_batch, int(n * overfit))
    return int(overfit) * global_batch


def _val_indices(val_set: TokenDataset | None, limit: int | None, count: int) -> list[int]:
    if val_set is None:
        return []
    n = len(val_set) if limit is None else min(limit, len(val_set))
    return eval_indices(n, count) if limit is None else list(range(n))


def _val_every(interval: int | float, steps_per_epoch: int) -> int:
    if isinstance(interval, float) and interval <= 1.0:
        return max(1, int(interval * steps_per_epoch))
    return max(1, int(interval))


def _make_loggers(cfg: RunConfig, run_dir: Path) -> Loggers:
    sinks: list[Any] = [CSVLog(run_dir)]
    if cfg.logger.tensorboard:
        sinks.append(TensorBoardLog(run_dir))
    if cfg.logger.wandb is not None:
        sinks.append(WandbLog(run_dir, cfg.logger.wandb, cfg.model_dump(mode="json")))
    return Loggers(sinks)


def _rng_state() -> dict[str, Any]:
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore(path: Path, run: Run) -> None:
    """Weights, optimizer, step, data position, best-k bookkeeping and RNG of the checkpoint at `path`."""
    optimizer, state, manager = run.optimizer, run.state, run.manager
    if not is_hf_checkpoint(path):  # else `_data_and_model` loaded the transformers model from `path`
        load_weights(run.raw_model, path / WEIGHTS_FILE, device=run.fabric.device)
    saved = load_trainer_state(path, keys=("optimizer", "state", "latest", "manager", "rng"))
    try:
        optimizer.load_state_dict(saved["optimizer"])
        state.step, state.epoch, state.batch = (int(saved["state"][k]) for k in ("step", "epoch", "batch"))
        state.latest = dict(saved["latest"])
        manager.load_state_dict(saved["manager"])
        torch.set_rng_state(saved["rng"]["torch"])
        random.setstate(saved["rng"]["python"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a state of another shape or model
        raise CheckpointError(
            f"{path / STATE_FILE}: does not fit this run ({type(e).__name__}: {str(e)[:200]}); resume from a "
            "checkpoint of the same config, or start a new out_dir"
        ) from None
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    t = run.cfg.train
    if t.objective == "dpo" and t.dpo_reference == "precomputed":
        dpo.restore_precomputed(saved.get("dpo_reference"), _pair_sets(run), str(path / STATE_FILE))


def _fmt_stats(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {int(v) if float(v).is_integer() else v}" for k, v in stats.items())
