"""Character-level Shakespeare on the CPU: tinylm's `examples/shakespeare/cpu.yaml` against a peer.

The peer is Hugging Face transformers' GPT2LMHeadModel at the same shape (4 layers, 4 heads, 128 dims,
block 64, batch 12, 2000 steps) trained by a plain PyTorch loop with nanoGPT's CPU recipe (lr 1e-3 → 1e-4
cosine, warmup 100, AdamW betas 0.9/0.99, weight decay 0.1, clip 1.0) on the same tokens, evaluated on the
same validation windows. Prints wall time, time to the first val <= 1.89, best val, and the ratios.

    python bench/shakespeare_cpu.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tinylm.config import load_config
from tinylm.data.datasets import BatchLoader, eval_indices
from tinylm.train import fit
from tinylm.train.data import prepare
from tinylm.train.loggers import read_metrics
from tinylm.train.optim import lr_at

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.89


def run_tinylm(steps: int, out: Path) -> dict:
    cfg = load_config(REPO / "examples/shakespeare/cpu.yaml", [f"out_dir={out}", f"train.max_steps={steps}"])
    t0 = time.perf_counter()
    fit(cfg)
    wall = time.perf_counter() - t0
    rows = read_metrics(out / "metrics.csv")
    vals = [(s, v) for s, n, v in rows if n == "val_loss"]
    elapsed = {s: v for s, n, v in rows if n == "elapsed_s"}
    hit = next((elapsed[s] for s, v in vals if v <= TARGET), None)
    return {"wall_s": wall, "best_val": min(v for _, v in vals), "to_target_s": hit}


def run_peer(steps: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = load_config(REPO / "examples/shakespeare/cpu.yaml", ["out_dir=/tmp/unused"])
    t0 = time.perf_counter()
    data = prepare(cfg)
    torch.manual_seed(1337)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=data.tokenizer.vocab_size,
            n_positions=64,
            n_embd=128,
            n_layer=4,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )
    loader = BatchLoader(data.train, 12, seed=1337)
    val_idx = eval_indices(len(data.val), 20 * 12)
    batches = (b for epoch in range(10**6) for b in loader.iterate(epoch))
    best, hit = math.inf, None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, max_lr=1e-3, min_lr=1e-4, warmup_steps=100, total_steps=steps)
        b = next(batches)
        logits = model(b["input_ids"]).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), b["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 250 == 0 or step + 1 == steps:
            model.eval()
            with torch.no_grad():
                losses = []
                for i in range(0, len(val_idx), 12):
                    vb = data.val.batch(val_idx[i : i + 12])
                    out = model(vb["input_ids"]).logits
                    losses.append(F.cross_entropy(out.view(-1, out.size(-1)), vb["labels"].view(-1)))
                val = torch.stack(losses).mean().item()
            model.train()
            best = min(best, val)
            if hit is None and val <= TARGET:
                hit = time.perf_counter() - t0
    return {"wall_s": time.perf_counter() - t0, "best_val": best, "to_target_s": hit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_tinylm(args.steps, Path(tmp) / "run")
    peer = run_peer(args.steps)

    def fmt(x):
        return "never" if x is None else f"{x:.1f} s"

    print(f"\n{'':24}{'tinylm':>12}{'transformers':>14}{'ratio':>8}")
    print(
        f"{'wall time':24}{fmt(ours['wall_s']):>12}{fmt(peer['wall_s']):>14}{peer['wall_s'] / ours['wall_s']:>7.2f}x"
    )
    ratio = (
        f"{peer['to_target_s'] / ours['to_target_s']:.2f}x"
        if ours["to_target_s"] and peer["to_target_s"]
        else "-"
    )
    print(f"{'time to val <= 1.89':24}{fmt(ours['to_target_s']):>12}{fmt(peer['to_target_s']):>14}{ratio:>8}")
    print(f"{'best val loss':24}{ours['best_val']:>12.4f}{peer['best_val']:>14.4f}")


if __name__ == "__main__":
    main()
