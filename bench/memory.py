"""Training memory: `tinylm.footprint`'s estimate against the peak measured over two real training steps.

Each row builds the model from scratch and runs two steps of our loop's loss, AdamW and clipping through
Fabric (`tinylm.train.fits.measure_training_peak`): on CUDA the peak of `torch.cuda.max_memory_allocated`, on
the CPU the peak of the profiler's allocation events. Prints estimate, measured and their ratio.

    python bench/memory.py                          # the CPU rows (a minute on 2 cores)
    python bench/memory.py --device cuda            # the GPU rows, every precision
    python bench/memory.py --device cpu cuda --only qa smollm2-135m
"""

from __future__ import annotations

import argparse
import time

import torch

from tinylm.footprint import Workload, fmt_bytes, training_memory
from tinylm.model import GPTConfig
from tinylm.train.fits import measure_training_peak

SMOLLM2 = dict(
    vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536,
    pos="rope", rope_base=1e5, norm="rmsnorm", mlp="swiglu", bias=False, block_size=2048,
)  # fmt: skip
CONFIGS = {  # name: (model config, batch, seq_len, which devices run it by default)
    "qa": (
        dict(vocab_size=512, n_layer=4, n_head=4, n_embd=128, pos="rope", norm="rmsnorm", mlp="swiglu",
             bias=False, block_size=64),
        16, 64, ("cpu", "cuda"),
    ),
    "shakespeare-cpu": (
        dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, pos="rope", bias=False, block_size=64),
        12, 64, ("cpu", "cuda"),
    ),
    "shakespeare": (
        dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False, block_size=256),
        64, 256, ("cuda",),
    ),
    "gpt2-small": (
        dict(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, block_size=1024), 8, 512, ("cuda",),
    ),
    "smollm2-135m": (SMOLLM2, 8, 512, ("cuda",)),
    "smollm2-135m-packed": (SMOLLM2, 4, 512, ()),
}  # fmt: skip
PRECISIONS = {"cpu": ["32-true", "bf16-mixed", "bf16-true"], "cuda": ["32-true", "bf16-mixed", "bf16-true"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", nargs="+", default=["cpu"], choices=["cpu", "cuda"])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="these configs on every device")
    parser.add_argument("--precision", nargs="+", choices=["32-true", "bf16-mixed", "bf16-true"])
    args = parser.parse_args()
    if "cuda" in args.device and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    header = f"{'config':22} {'device':6} {'precision':10} {'batch':>9} {'attn':6} "
    print(header + f"{'estimate':>12} {'measured':>12} {'ratio':>6}  peak at")
    worst = 0.0
    for device in args.device:
        for name, (fields, batch, seq, devices) in CONFIGS.items():
            if (args.only and name not in args.only) or (not args.only and device not in devices):
                continue
            config = GPTConfig(**fields)
            for precision in args.precision or PRECISIONS[device]:
                work = Workload(batch, seq, precision, device, packed=name.endswith("-packed"))
                est = training_memory(config, work)
                t0 = time.perf_counter()
                measured = measure_training_peak(config, work)
                ratio = est.peak / measured
                worst = max(worst, abs(ratio - 1))
                print(
                    f"{name:22} {device:6} {precision:10} {f'{batch}x{seq}':>9} {est.kernel:6} "
                    f"{fmt_bytes(est.peak):>12} {fmt_bytes(measured):>12} {ratio:6.3f}  {est.peak_at} "
                    f"({time.perf_counter() - t0:.1f}s)",
                    flush=True,
                )
                if device == "cuda":
                    torch.cuda.empty_cache()
    print(f"largest deviation: {worst:.1%}")


if __name__ == "__main__":
    main()
