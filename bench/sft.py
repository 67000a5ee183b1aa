"""SFT step speed: tinylm's training step against a plain transformers training loop, same model and data.

SmolLM2-135M's shape (random weights: the GGUF does not travel to the GPU machine; `--pretrained` loads the
real one on the CPU), sequence `--seq` tokens, batch `--batch`, AdamW, loss on every token. Both sides run
the same number of optimizer steps on the same random token batches after a warm-up; prints tokens/s and
the ratio.

    python bench/sft.py [--device cuda] [--dtype bf16] [--seq 1024] [--batch 16] [--steps 20] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import smollm2_hf
from tinylm.convert import hf_to_tinylm
from tinylm.train.loss import WithLoss, compute_loss
from tinylm.train.optim import make_optimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(step, batches, device: str) -> float:
    step(batches[0])  # warm-up (and compilation)
    step(batches[0])
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches[1:]:
        loss = step(b)
    loss.item()  # one sync at the end
    tokens = sum(b.numel() for b in batches[1:])
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="torch.compile tinylm's model and loss")
    parser.add_argument("--pretrained", action="store_true")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    autocast = torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32)

    hf = smollm2_hf(args.pretrained)
    ours, _ = hf_to_tinylm(hf)
    hf.to(args.device).train()
    ours.to(args.device).train()
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 49152, (args.batch, args.seq + 1), generator=g).to(args.device)
        for _ in range(args.steps + 1)
    ]

    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, fused=args.device == "cuda")

    def hf_step(b):
        with autocast:
            loss = hf(input_ids=b[:, :-1], labels=b[:, :-1]).loss
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.detach()

    model = WithLoss(ours)  # what `tinylm train` runs: model and loss compiled together
    model = torch.compile(model) if args.compile else model
    opt = make_optimizer(ours, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), device_type=args.device)

    def our_step(b):
        with autocast:
            loss = compute_loss(model, {"input_ids": b[:, :-1], "labels": b[:, 1:]})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    print(f"device {args.device}, dtype {dtype}, seq {args.seq}, batch {args.batch}, steps {args.steps}")
    ours_tps = run(our_step, batches, args.device)
    hf_tps = run(hf_step, batches, args.device)
    print(f"{'':14}{'tokens/s':>12}")
    print(f"{'tinylm':14}{ours_tps:>12,.0f}")
    print(f"{'transformers':14}{hf_tps:>12,.0f}")
    print(f"{'ratio':14}{ours_tps / hf_tps:>11.2f}x")


if __name__ == "__main__":
    main()
