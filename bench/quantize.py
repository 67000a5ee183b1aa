"""Quantized inference: SmolLM2-135M-Instruct in float32, bfloat16 and weight-only int8, side by side.

Speed and memory: batch 1, a 16-token prompt, 256 new tokens greedy with no early stop (as bench/decode.py),
the best of `--repeats` timed runs for each dtype (each after an untimed one), and the bytes of the
weights; ratios against float32.
Quality: perplexity on the Shakespeare validation split (the last 10% of the text, as the
examples/shakespeare configs hold out) over `--windows` windows of `--window` tokens spread evenly over
it, float32 against int8; issue #6 asks for a relative change under 2%.

    python bench/quantize.py [--device cpu] [--new 256] [--repeats 3] [--windows 8] [--window 512]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

import tinylm
from decode import time_tinylm
from tinylm.data.datasets import eval_indices
from tinylm.quantize import weight_bytes

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = "smollm2-135m-instruct"
MAX_PPL_CHANGE = 0.02


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, windows: int, window: int) -> float:
    """exp(mean next-token loss) over `windows` windows of `window` predicted tokens spread over `ids`."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in eval_indices(len(ids) - window, windows):
        chunk = ids[start : start + window + 1].to(device)  # (window + 1,)
        logits = model(chunk[None, :-1])[0].float()  # (window, vocab)
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += window
    return math.exp(nll / count)


def variants(lm: tinylm.LM, device: str):
    """(name, model) for float32 (`lm`'s own) and bfloat16 and int8, each loaded fresh from the checkpoint."""
    yield "fp32", lm.model
    yield "bf16", tinylm.load(MODEL, device=device).model.to(torch.bfloat16)
    yield "int8", tinylm.load(MODEL, device=device, quantize="int8").model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    args = parser.parse_args()
    lm = tinylm.load(MODEL, device=args.device)
    text = SHAKESPEARE.read_text()
    val = torch.tensor(lm.tokenizer.encode(text[int(len(text) * 0.9) :]))
    block_size = lm.config.block_size
    prompts = torch.randint(
        1, lm.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0)
    )
    print(
        f"{MODEL} on {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}; batch 1, prompt {args.prompt}, {args.new} new tokens"
    )
    print(f"{'dtype':>6}{'weights MB':>12}{'tok/s (best)':>14}{'runs':>22}{'speed':>8}{'memory':>8}")
    rows, ppl = {}, {}
    for name, model in variants(lm, args.device):
        with torch.inference_mode():
            runs = [
                time_tinylm(model, prompts.to(args.device), args.new, args.device, block_size)[0]
                for _ in range(args.repeats)
            ]
        rows[name] = (weight_bytes(model) / 1e6, max(runs))
        mb, tps = rows[name]
        speed, memory = tps / rows["fp32"][1], rows["fp32"][0] / mb
        shown = " ".join(f"{r:.1f}" for r in runs)
        print(f"{name:>6}{mb:>12,.1f}{tps:>14,.1f}{shown:>22}{speed:>7.2f}x{memory:>7.2f}x")
        if name != "bf16":
            ppl[name] = perplexity(model, val, args.windows, args.window)
    change = ppl["int8"] / ppl["fp32"] - 1
    verdict = "ok" if abs(change) < MAX_PPL_CHANGE else "FAILS"
    print(
        f"perplexity on the Shakespeare val split ({args.windows} x {args.window} tokens): "
        f"fp32 {ppl['fp32']:.3f}, int8 {ppl['int8']:.3f}, change {change:+.2%} "
        f"(limit {MAX_PPL_CHANGE:.0%}: {verdict})"
    )


if __name__ == "__main__":
    main()
