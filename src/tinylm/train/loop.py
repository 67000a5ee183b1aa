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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from tinylm.chat.templates import layout_prompt
from tinylm.checkpoint import (
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointManager,
    is_hf_checkpoint,
    load_trainer_state,
    load_weights,
    read_meta,
    save_checkpoint,
)
from tinylm.config import RunConfig, TrainConfig, dump_config
from tinylm.convert import resolve_model
from tinylm.data.datasets import IGNORE_INDEX, BatchLoader, TokenDataset, eval_indices
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.files import write_text_atomic
from tinylm.hf_model import HFCausalLM, HFModelConfig
from tinylm.model import GPTConfig, build_model, count_params
from tinylm.tokenizers import load_tokenizer
from tinylm.train.data import prepare, resolve_resume
from tinylm.train.loggers import CSVLog, Loggers, TensorBoardLog, WandbLog
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


def fit(cfg: RunConfig) -> Path:
    """Train as `cfg` says; returns the run directory (checkpoints in RUN_DIR/checkpoints)."""
    from lightning.fabric import Fabric

    t = cfg.train
    precision = "32-true" if t.precision == "32" else t.precision
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=precision,
    )
    fabric.launch()
    run_dir = Path(cfg.out_dir)
    ckpt_root = run_dir / "checkpoints"
    resume_from = resolve_resume(cfg.checkpoint.resume, ckpt_root)
    if resume_from is not None and not resume_from.exists():
        raise TinylmError(f"checkpoint.resume: {resume_from} does not exist")
    if fabric.is_global_zero:  # refuses a folder holding another run; clears what killed saves left
        for note in claim_run_dir(run_dir, resume_from):
            console.print(f"out_dir: {note}", highlight=False)
    fabric.barrier()
    fabric.seed_everything(cfg.seed, verbose=False)
    launched = time.perf_counter()

    # -- setup: data, tokenizer, model, optimizer --------------------------------------------------------
    init = resolve_model(cfg.init_from) if cfg.init_from is not None else None
    source = resume_from or init
    tokenizer = load_tokenizer(source / "tokenizer") if source else None
    data = prepare(cfg, tokenizer)
    tokenizer = data.tokenizer
    model_cfg: GPTConfig | HFModelConfig
    if source is not None and is_hf_checkpoint(source):  # runs through transformers (tinylm.hf_model)
        raw_model = _hf_model(cfg, source).to(fabric.device)  # resumed or pretrained weights
        model_cfg = raw_model.config
    else:
        if init is None:
            model_cfg = cfg.model_config_for(tokenizer.vocab_size)
        else:
            model_cfg = replace(GPTConfig.from_dict(read_meta(init)["model"]), **cfg.model)
        _check_fits(cfg, model_cfg, fabric)  # before a single weight is allocated
        with fabric.init_module():
            raw_model = build_model(model_cfg)
        if init is not None and resume_from is None:
            load_weights(raw_model, init / WEIGHTS_FILE, device=fabric.device)
    adapt(raw_model, t)
    optimizer = make_optimizer(
        raw_model,
        lr=t.learning_rate,
        weight_decay=t.weight_decay,
        betas=t.betas,
        device_type=fabric.device.type,
    )
    if fabric.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = WithLoss(raw_model)  # compiled together, the loss fuses with the head: no fp32 logits in memory
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
    val_idx = _val_indices(val_set, limit, t.eval_batches * t.batch_size)
    steps_per_epoch = math.ceil(len(loader) / t.accumulate_grad_batches)
    total_steps = t.max_steps if t.max_steps is not None else t.max_epochs * steps_per_epoch
    if t.max_steps is not None and t.max_epochs is not None:
        total_steps = min(total_steps, t.max_epochs * steps_per_epoch)
    warmup = warmup_steps_for(t.warmup, total_steps)
    min_lr = t.min_lr if t.min_lr is not None else t.learning_rate / 10
    val_every = _val_every(t.val_check_interval, steps_per_epoch)

    state = TrainState()
    manager = CheckpointManager(
        ckpt_root,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=cfg.checkpoint.save_top_k,
    )
    loggers = _make_loggers(cfg, run_dir) if fabric.is_global_zero else Loggers([])
    if resume_from is not None:
        _restore(resume_from, raw_model, optimizer, state, manager, fabric)
        if fabric.is_global_zero:
            CSVLog(run_dir).truncate_after(state.step)
    if fabric.is_global_zero:
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        n, trainable = count_params(raw_model), count_params(raw_model, trainable_only=True)
        console.print(
            f"[bold]tinylm train[/] {n:,} parameters ({n / 1e6:.2f}M), {trainable:,} trainable "
            f"({trainable / n:.1%}), {len(loader)} batches/epoch, "
            f"{total_steps} steps, {fabric.world_size} process(es) on {fabric.device.type}, precision {precision}"
            + (f"; resumed at step {state.step} from {resume_from}" if resume_from else "")
        )
        console.print(f"data: {_fmt_stats(data.stats)}")

    def checkpoint(value: float | None, *, last: bool) -> None:
        """Rank 0 saves this step (once) if `value` of the monitored metric is a new top-k or `last` is
        asked for; every rank waits at the barrier, so all ranks take the same path."""
        if fabric.is_global_zero and (last or (value is not None and manager.improves(value))):
            if manager.step_dir(state.step).name not in manager.written:  # best and last: one save
                save_step()
            manager.record(state.step, value, last=last)
        fabric.barrier()

    def save_step() -> None:
        meta = {
            "step": state.step,
            "metrics": dict(state.latest),
            "prompt_template": cfg.data.prompt_template,
            "data_kind": cfg.data.kind,
            "generation": cfg.generation.model_dump(),
        }
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "state": {"step": state.step, "epoch": state.epoch, "batch": state.batch},
            "latest": dict(state.latest),
            "manager": manager.state_dict(),
            "rng": _rng_state(),
        }
        save_checkpoint(
            manager.step_dir(state.step),
            model=_weights_to_save(raw_model, t),
            config=model_cfg,
            tokenizer=tokenizer,
            meta=meta,
            trainer_state=trainer_state,
            run_config=dump_config(cfg),
        )

    def validate(max_batches: int | None = None) -> dict[str, float]:
        idx = val_idx if max_batches is None else val_idx[: max_batches * t.batch_size]
        loss = evaluate(model, val_set, idx, t.batch_size, fabric)
        metrics = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        if t.compute_metrics and data.val_examples and max_batches is None:
            metrics |= generation_metrics(raw_model, tokenizer, data.val_examples[: t.metric_examples], cfg)
        return metrics

    # -- sanity check ---------------------------------------------------------------------------------
    if val_set is not None and t.num_sanity_val_steps > 0 and state.step == 0:
        validate(t.num_sanity_val_steps)

    # -- the loop -------------------------------------------------------------------------------------
    progress = Progress(total_steps, enabled=fabric.is_global_zero, start=state.step)
    batches = _batch_stream(loader, state)
    loss_sum = torch.zeros((), device=fabric.device)
    window_t0, window_tokens, window_steps = time.perf_counter(), 0, 0
    model.train()
    while state.step < total_steps:
        lr = lr_at(
            state.step, max_lr=t.learning_rate, min_lr=min_lr, warmup_steps=warmup, total_steps=total_steps
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(t.accumulate_grad_batches):
            batch = {k: v.to(fabric.device, non_blocking=True) for k, v in next(batches).items()}
            with fabric.no_backward_sync(model, enabled=micro < t.accumulate_grad_batches - 1):
                loss = compute_loss(model, batch) / t.accumulate_grad_batches
                fabric.backward(loss)
            loss_sum += loss.detach()
            window_tokens += batch["input_ids"].numel() * fabric.world_size
        if t.grad_clip is not None:
            fabric.clip_gradients(model, optimizer, max_norm=t.grad_clip, error_if_nonfinite=False)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window_steps += 1

        is_last = state.step == total_steps
        if state.step % t.log_every_n_steps == 0 or is_last:
            elapsed = time.perf_counter() - window_t0
            train_loss = fabric.all_reduce(loss_sum, reduce_op="mean").item() / window_steps
            metrics = {
                "train_loss": train_loss,
                "lr": lr,
                "tokens_per_sec": window_tokens / max(elapsed, 1e-9),
            }
            state.latest.update(metrics)
            loggers.log({**metrics, "epoch": state.epoch}, state.step)
            loss_sum.zero_()
            window_t0, window_tokens, window_steps = time.perf_counter(), 0, 0
        paused = time.perf_counter()  # validation and saving are not training throughput
        reached = False  # the val loss reached train.stop_at_val_loss: save and stop
        if val_set is None and (state.step % t.log_every_n_steps == 0 or is_last):
            checkpoint(state.latest.get(cfg.checkpoint.monitor), last=False)
        if val_set is not None and (state.step % val_every == 0 or is_last):
            model.eval()
            metrics = {**validate(), "elapsed_s": time.perf_counter() - launched, "unix_time": time.time()}
            model.train()
            state.latest.update(metrics)
            loggers.log(metrics, state.step)
            progress.note(f"step {state.step}: val_loss {metrics['val_loss']:.4f}")
            checkpoint(state.latest.get(cfg.checkpoint.monitor), last=False)
            if t.stop_at_val_loss is not None:  # rank 0 decides, so that every process stops together
                reached = bool(fabric.broadcast(metrics["val_loss"] <= t.stop_at_val_loss, src=0))
        every = cfg.checkpoint.every_n_train_steps
        if (every and state.step % every == 0) or ((is_last or reached) and cfg.checkpoint.save_last):
            checkpoint(None, last=True)
        window_t0 += time.perf_counter() - paused
        progress.update(state.step, state.latest)
        if reached:
            break
    progress.close()
    loggers.close()
    if fabric.is_global_zero:
        summary = ", ".join(
            f"{k} {v:.4f}" for k, v in state.latest.items() if k in ("train_loss", "val_loss")
        )
        if state.step < total_steps:
            console.print(f"step {state.step}: val_loss reached stop_at_val_loss {t.stop_at_val_loss}")
        console.print(f"done: step {state.step}, {summary}; checkpoints in {ckpt_root}")
    return run_dir


def _check_fits(cfg: RunConfig, model_cfg: GPTConfig, fabric: Any) -> None:
    """Print the memory estimate of the run and refuse one that cannot fit, measured on a model built on
    the meta device (shapes only), so that an oversized config fails before allocating anything."""
    from tinylm.memory import check_fits

    with torch.device("meta"):
        probe = build_model(model_cfg)
        adapt(probe, cfg.train)
    check_fits(cfg, probe, fabric)


def adapt(model: nn.Module, t: TrainConfig) -> None:
    """Freeze parameter groups, or wrap layers with LoRA adapters, as the config asks."""
    if t.freeze is not None:
        from tinylm.train.freeze import apply_freezing

        f = t.freeze
        apply_freezing(model, emb=f.emb, ln=f.ln, attn=f.attn, ff=f.ff, other=f.other, keep=f.keep)
    elif t.lora is not None:
        from tinylm.train.lora import apply_lora

        apply_lora(model, r=t.lora.r, alpha=t.lora.alpha, dropout=t.lora.dropout, targets=t.lora.targets)


def _hf_model(cfg: RunConfig, source: Path) -> HFCausalLM:
    """The transformers model of an "hf" checkpoint, after refusing the options it cannot honour."""
    problems = []
    if cfg.data.packing:
        problems.append("data.packing: a transformers model cannot keep packed rows apart; set it to false")
    if cfg.model:
        problems.append(
            f"model: {', '.join(sorted(cfg.model))} cannot be set on a transformers model; "
            f"it keeps the settings of {source / 'config.json'}"
        )
    if problems:
        raise ConfigError(problems, f"the run on {source}")
    return HFCausalLM.from_pretrained(source)


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
    from tinylm.generate.detok import TextStream
    from tinylm.generate.engine import generate_batch

    acc = MetricAccumulator()
    block = model.config.block_size
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
            stop_ids=[tokenizer.eos_id],
        )
        replies = []
        for row in rows:
            stream = TextStream(tokenizer, cfg.generation.stop)
            for token in row.tokens:
                if token != tokenizer.eos_id:
                    stream.push(token)
            replies.append(stream.text().strip())
        acc.add(replies, [e.response for e in chunk])
    return {f"val_{k}": v for k, v in acc.compute().items() if k != "count"}


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
        logits = self.model(input_ids, segment_ids=segment_ids)
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
def evaluate(
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


def _restore(
    path: Path, model: nn.Module, optimizer, state: TrainState, manager: CheckpointManager, fabric
) -> None:
    if not isinstance(model, HFCausalLM):  # a transformers model was loaded from `path` already
        load_weights(model, path / WEIGHTS_FILE, device=fabric.device)
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


def _fmt_stats(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {int(v) if float(v).is_integer() else v}" for k, v in stats.items())
