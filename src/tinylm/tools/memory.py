"""`tinylm estimate-memory`: the training and inference estimates of `tinylm.footprint` for a training
config, a checkpoint or a pretrained model, as rich tables or JSON.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tinylm.checkpoint import is_hf_checkpoint, read_meta
from tinylm.config import load_config
from tinylm.errors import TinylmError
from tinylm.files import check_input_file
from tinylm.footprint import (
    INFERENCE_DTYPES,
    INFERENCE_PARTS,
    MAX_BATCH,
    TRAINING_PARTS,
    Subject,
    device_memory,
    fmt_bytes,
    inference_memory,
    largest_batch,
    model_counts,
)
from tinylm.hub import resolve_model
from tinylm.model import GPTConfig
from tinylm.train.fits import subject_for_run


def resolve_subject(source: str | Path, overrides: list[str] | None = None) -> Subject:
    """A YAML training config (loaded as `tinylm train` loads it, seed trainer configs included), a
    checkpoint directory, or a pretrained model name / HF directory (batch 1, the full context)."""
    path = Path(source)
    if path.exists() and not path.is_dir():  # a FIFO or a device is refused by its type, never opened
        check_input_file(path, "training config (YAML)")
        return subject_for_run(load_config(path, overrides), label=str(path))
    config = _gpt_config(resolve_model(source))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Subject(str(source), config, batch_size=1, seq_len=config.block_size, device=device)


def _gpt_config(directory: Path) -> GPTConfig:
    """The GPTConfig of a checkpoint; TinylmError for a model that runs through transformers."""
    if is_hf_checkpoint(directory):
        raise TinylmError(
            f"{directory}: the estimate models tinylm's GPT op by op; this model runs through transformers "
            "(tinylm.hf_model), which it does not cover"
        )
    return GPTConfig.from_dict(read_meta(directory)["model"])


COLUMNS = {  # --precision: (training precisions, inference dtypes)
    "fp32": (["32-true"], ["fp32"]),
    "bf16": (["bf16-mixed", "bf16-true"], ["bf16"]),
    "int8": ([], ["int8"]),
    "all": (["32-true", "bf16-mixed", "bf16-true"], list(INFERENCE_DTYPES)),
}


def estimate_report(
    subject: Subject,
    *,
    precision: str = "all",
    batch_size: int | None = None,
    seq_len: int | None = None,
    device: str | None = None,
    budget: int | None = None,
) -> dict[str, Any]:
    """Training and inference estimates for `subject` as a JSON-able dict (what the CLI prints).

    device: "cpu" or "cuda" instead of the subject's (which kernels run, cuBLAS workspaces).
    budget: device memory in bytes for the largest batch that fits; None: this machine's device memory
    (CUDA total or available RAM), or no largest batch if that cannot be known here.
    """
    if precision not in COLUMNS:
        raise TinylmError(f"--precision {precision!r}: expected one of {', '.join(COLUMNS)}")
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
        raise TinylmError(f"--batch-size: expected an integer in 1..{MAX_BATCH:,}, found {batch_size}")
    if seq_len is not None and not 1 <= seq_len <= subject.config.block_size:
        raise TinylmError(
            f"--seq-len: expected 1..{subject.config.block_size} (the model's block_size), found {seq_len}"
        )
    if batch_size is not None:
        subject = replace(subject, batch_size=batch_size)
    if seq_len is not None:
        subject = replace(subject, seq_len=seq_len)
    if device is not None:
        subject = replace(subject, device=device)
    where = "--device-memory"
    if budget is None:
        try:
            budget, where = device_memory(subject.device)
        except TinylmError:
            where = "unknown here: give --device-memory"
    train_cols, infer_cols = COLUMNS[precision]
    if precision == "all" and subject.precision and subject.precision not in train_cols:
        train_cols = [*train_cols, subject.precision]
    c, s = subject.config, subject
    report: dict[str, Any] = {
        "source": s.label,
        "kind": c.kind,
        "params": s.params if s.params is not None else model_counts(c)[0],
        "batch_size": s.batch_size,
        "rows_per_example": s.rows_per_example,
        "seq_len": s.seq_len,
        "device": s.device,
        "config_precision": s.precision,
        "device_memory": budget,
        "device_memory_from": where,
        "training": {},
        "inference": {},
    }
    for name in train_cols:
        est = s.training(name)
        report["trainable"] = est.trainable
        report["attention"] = est.kernel
        row: dict[str, Any] = {**est.parts(), "peak": est.peak, "peak_at": est.peak_at}
        row["bytes_per_param"] = est.peak / max(est.params, 1)
        if budget is not None:
            row["largest_batch"] = largest_batch(lambda b, n=name: s.training(n, b).peak, budget)
        report["training"][name] = row
    for dtype in infer_cols:
        inf = inference_memory(c, batch_size=s.batch_size, seq_len=s.seq_len, dtype=dtype, device=s.device)
        row = {**inf.parts(), "peak": inf.peak}
        if budget is not None:
            row["largest_batch"] = largest_batch(
                lambda b, d=dtype: (
                    inference_memory(c, batch_size=b, seq_len=s.seq_len, dtype=d, device=s.device).peak
                ),
                budget,
            )
        report["inference"][dtype] = row
    return report


def print_report(report: dict[str, Any], console: Any) -> None:
    """The report as two rich tables, training and inference, one column per precision."""
    from rich.table import Table

    r = report
    budget = r["device_memory"]
    fits = f"largest batch in {fmt_bytes(budget)}" if budget is not None else None
    console.print(
        f"[bold]{r['source']}[/]: {r['kind']} with {r['params']:,} parameters "
        f"({r['params'] / 1e6:.2f}M), batch {r['batch_size']}"
        + (f" pairs ({r['rows_per_example']} rows each)" if r["rows_per_example"] > 1 else "")
        + f" x {r['seq_len']} tokens on {r['device']}"
        + (f", attention kernel {r['attention']}" if r.get("attention") not in (None, "none") else "")
        + f"; device memory {fmt_bytes(budget) + ' (' + r['device_memory_from'] + ')' if budget else r['device_memory_from']}",
        highlight=False,
    )
    if r["training"]:
        table = Table(title=f"training, one process ({r.get('trainable', 0):,} trainable parameters)")
        table.add_column("")
        for name in r["training"]:
            star = " (config)" if name == r["config_precision"] else ""
            table.add_column(name + star, justify="right")
        for part in TRAINING_PARTS:
            if any(v[part] for v in r["training"].values()):  # e.g. no cuBLAS on the CPU
                table.add_row(part, *(_cell(v[part]) for v in r["training"].values()))
        table.add_row("[bold]peak[/]", *(f"[bold]{fmt_bytes(v['peak'])}[/]" for v in r["training"].values()))
        table.add_row("peak reached in", *(v["peak_at"] for v in r["training"].values()))
        table.add_row("bytes per parameter", *(f"{v['bytes_per_param']:.1f}" for v in r["training"].values()))
        if fits:
            table.add_row(fits, *(f"{v['largest_batch']:,}" for v in r["training"].values()))
        console.print(table)
    else:
        console.print(
            "training: int8 is for inference only; tinylm trains in fp32 or bf16 and quantizes after"
        )
    if r["inference"]:
        table = Table(title=f"inference: weights, KV cache and logits for {r['batch_size']} x {r['seq_len']}")
        table.add_column("")
        for dtype in r["inference"]:
            table.add_column(dtype, justify="right")
        for part in INFERENCE_PARTS:
            if any(v[part] for v in r["inference"].values()):
                table.add_row(part, *(_cell(v[part]) for v in r["inference"].values()))
        table.add_row("[bold]peak[/]", *(f"[bold]{fmt_bytes(v['peak'])}[/]" for v in r["inference"].values()))
        if fits:
            table.add_row(fits, *(f"{v['largest_batch']:,}" for v in r["inference"].values()))
        console.print(table)


def _cell(n: int) -> str:
    return fmt_bytes(n) if n else "-"
