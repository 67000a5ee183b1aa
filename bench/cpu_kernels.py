"""The matrix products of one decoded token on the CPU: tinylm's kernels against PyTorch's, same weights.

Streams the weights of every layer of a SmolLM2-135M-shaped model (30 x [qkv 960x576, proj 576x576,
gate+up 3072x576, down 576x1536] + the 49152x576 head) through one-row products, as decoding one token
does, far more bytes than any cache holds:
- float32 weights: `F.linear` against `tinylm.cpu_kernels.f32_linear`;
- int8 weights: `aten._weight_int8pack_mm` (bfloat16 activations, what PyTorch offers) against
  `tinylm.cpu_kernels.int8_linear`;
and, as the ceiling, a plain `sum` over a float32 tensor of the same bytes (memory bandwidth).
Prints the best of `--repeats` passes, GB/s and the ratios.

    python bench/cpu_kernels.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from tinylm import cpu_kernels
from tinylm.quantize import quantize_rows

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ceiling(n: int, repeats: int) -> float:
    """Seconds of a float32 sum over n values: reading n * 4 bytes at the machine's bandwidth."""
    flat = torch.randn(n)
    return best_of(lambda: flat.sum(), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    assert cpu_kernels.ready(), "tinylm's CPU kernels are not built (no C compiler?)"
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=g) * 0.02 for shape in SHAPES]
    x = {k: torch.randn(1, k, generator=g) for k in (576, 1536)}
    xb = {k: v.bfloat16() for k, v in x.items()}
    n_weights = sum(w.numel() for w in weights)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.2f}; {len(SHAPES)} one-row products, {n_weights / 1e6:.1f}M weights"
    )
    rows = [("float32 sum (bandwidth ceiling)", 4, ceiling(n_weights, args.repeats))]
    t_torch = best_of(lambda: [F.linear(x[w.size(1)], w) for w in weights], args.repeats)
    t_ours = best_of(lambda: [cpu_kernels.f32_linear(x[w.size(1)], w) for w in weights], args.repeats)
    rows += [("float32: F.linear", 4, t_torch), ("float32: tinylm f32_linear", 4, t_ours)]
    int8 = [quantize_rows(w, torch.bfloat16) for w in weights]
    weights.clear()  # free the float32 copies before the int8 passes
    scales32 = [s.float() for _, s in int8]
    i_torch = best_of(
        lambda: [torch.ops.aten._weight_int8pack_mm(xb[q.size(1)], q, s) for q, s in int8], args.repeats
    )
    i_ours = best_of(
        lambda: [cpu_kernels.int8_linear(x[q.size(1)], q, s) for (q, _), s in zip(int8, scales32)],
        args.repeats,
    )
    rows += [("int8: aten._weight_int8pack_mm", 1, i_torch), ("int8: tinylm int8_linear", 1, i_ours)]

    print(f"{'':36}{'ms':>8}{'GB/s':>8}")
    for name, nbytes, seconds in rows:
        print(f"{name:36}{seconds * 1e3:8.2f}{n_weights * nbytes / seconds / 1e9:8.1f}")
    print(f"tinylm / PyTorch: float32 {t_torch / t_ours:.2f}x, int8 {i_torch / i_ours:.2f}x")


if __name__ == "__main__":
    main()
