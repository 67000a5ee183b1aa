"""Pretraining throughput: tinylm's training step against transformers' GPT2LMHeadModel, same shapes.

GPT-2 124M shape (12 layers, 12 heads, 768 dims, block 1024, vocab 50304), batch 16, bf16 autocast,
random tokens already on the device (nanoGPT's bench.py setup), AdamW (fused on CUDA), gradient clipping
at 1.0 for both. tinylm runs exactly what `tinylm train` runs: Fabric with precision bf16-mixed, the
model and loss compiled together (`WithLoss`), `make_optimizer`. The peer is transformers' model with
SDPA attention, eager (`--hf-compile` adds a compiled run). Prints ms/step, tokens/s and MFU, with
flops per token = 6N + 12·L·H·Q·T (nanoGPT's estimate) against the bf16 matmul peak measured here.

    python bench/pretrain.py [--steps 30] [--batch 16] [--hf-compile] [--tiny]   # --tiny: a CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tinylm.model import GPT, GPTConfig
from tinylm.train.loss import WithLoss, compute_loss
from tinylm.train.optim import make_optimizer


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str) -> float:
    """Measured bf16 matmul FLOP/s (8192³ on CUDA); 0 on the CPU (MFU is not reported there)."""
    if device != "cuda":
        return 0.0
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    sync(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - t0)


def time_steps(step, n: int, warmup: int, device: str) -> float:
    """Median seconds per step over n timed steps, after warmup (compilation included there)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tinylm_step(cfg: GPTConfig, batch: int, device: str, compile: bool):
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=device, devices=1, precision="bf16-mixed" if device == "cuda" else "32-true")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with fabric.init_module():
        raw = GPT(cfg)
    opt = make_optimizer(raw, lr=6e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type=device)
    model = WithLoss(raw)
    model = torch.compile(model) if compile else model
    model, opt = fabric.setup(model, opt)
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size + 1), device=device)
    data = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step():
        loss = compute_loss(model, data)
        fabric.backward(loss)
        fabric.clip_gradients(model, opt, max_norm=1.0, error_if_nonfinite=False)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in raw.parameters())


def hf_step(cfg: GPTConfig, batch: int, device: str, compile: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa").to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=device == "cuda")
    run = torch.compile(model) if compile else model
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size + 1), device=device)
    inputs, labels = x[:, :-1], x[:, 1:]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step():
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            logits = run(input_ids=inputs).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hf-compile", action="store_true", help="also time transformers compiled")
    parser.add_argument("--no-compile", action="store_true", help="run tinylm eager")
    parser.add_argument("--tiny", action="store_true", help="a small shape for a CPU smoke run")
    args = parser.parse_args()
    if args.tiny:
        cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, bias=False)
    else:
        cfg = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False)
    cfg = GPTConfig(**{**cfg.to_dict(), "pos": "learned", "norm": "layernorm", "mlp": "gelu", "dropout": 0.0})
    device = args.device
    peak = matmul_peak(device)
    tokens = args.batch * cfg.block_size
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch} x {cfg.block_size}")
    if peak:
        print(f"measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s")
    runs = [("tinylm" + ("" if args.no_compile else " (compiled)"), tinylm_step, not args.no_compile)]
    runs.append(("transformers GPT2LMHeadModel (eager)", hf_step, False))
    if args.hf_compile:
        runs.append(("transformers GPT2LMHeadModel (compiled)", hf_step, True))
    results = []
    for label, build, compile in runs:
        step, n_params = build(cfg, args.batch, device, compile)
        n = n_params - cfg.block_size * cfg.n_embd  # nanoGPT counts no position embeddings
        flops_per_token = 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_size * cfg.block_size
        seconds = time_steps(step, args.steps, args.warmup, device)
        tps = tokens / seconds
        mfu = tps * flops_per_token / peak if peak else float("nan")
        results.append((label, seconds, tps, mfu))
        del step
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"{'':42}{'ms/step':>10}{'tokens/s':>12}{'MFU':>8}{'tinylm is':>11}")
    for label, seconds, tps, mfu in results:
        print(f"{label:42}{seconds * 1e3:>10.1f}{tps:>12,.0f}{mfu:>8.1%}{results[0][2] / tps:>10.2f}x")


if __name__ == "__main__":
    main()
