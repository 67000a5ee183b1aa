"""Fast CPU products for decoding (float32 and int8 weights), built from tinylm's own C source on first use.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth. On this
workplace's 2 cores a plain float32 sum streams 31-33 GB/s, while `F.linear` with one activation row
reaches 11-12 GB/s and `aten._weight_int8pack_mm` (int8 weights) 11-14 GB/s. The loops in `cpu_kernels.c`
(a vectorized dot product per output row, rows split over PyTorch's OpenMP threads) reach 25-29 GB/s for
float32 weights and 18-25 GB/s for int8 ones (bench/cpu_kernels.py; whole models: bench/decode.py,
bench/quantize.py). With more activation rows the float32 loop stays ahead of `F.linear` up to the 8 it
takes (1.5-4x, all of a SmolLM2 token's products, 2 cores), the int8 one only up to 2 (it converts each
weight again for every row; aten's kernel wins from 3 rows on). So `tinylm.model.Linear` runs these for up
to 8 float32 rows (a batch or beams of up to 8, one token each) and `tinylm.quantize.Int8Linear` for up
to 2; larger batches (a long prompt's prefill, training) stay on PyTorch's kernels, faster there.

The library is compiled once per machine with the system C compiler (`cc -O3 -march=native -fopenmp`)
into `$TINYLM_HOME/kernels/`, named by a hash of the source, the flags and the CPU's feature flags, and
loaded with ctypes. Without a compiler, or with TINYLM_CPU_KERNELS=0, `ready()` is False and PyTorch's
kernels run everywhere (correct, slower); a failed build is reported once as a warning. Inside a
torch.compile trace the kernels are the custom ops `torch.ops.tinylm.f32_linear` / `int8_linear`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = [
    "-O3",
    "-march=native",
    "-fopenmp",
    "-shared",
    "-fPIC",
    # let the compiler reorder the dot product's sums (to vectorize it), keeping NaN/inf semantics
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
]
MAX_M = 8  # the most rows the C code takes (its MAX_M)
F32_ROWS = MAX_M  # activation rows up to which each kernel beats PyTorch's on 2 cores
INT8_ROWS = 2

_lib: dict[str, ctypes.CDLL | None] = {}


def library() -> ctypes.CDLL | None:
    """The built library, built and loaded on first call; None where it cannot be."""
    if "lib" not in _lib:
        _lib["lib"] = _load() if os.environ.get("TINYLM_CPU_KERNELS", "1") != "0" else None
    return _lib["lib"]


@torch.compiler.assume_constant_result  # a torch.compile trace asks once and bakes the answer in
def ready() -> bool:
    """Whether the kernels can run (the library is built and loaded)."""
    return library() is not None


def decoding(x: Tensor, max_rows: int) -> bool:
    """Whether x (..., K) is what the kernels are for: float32 on the CPU, at most `max_rows` rows
    (F32_ROWS or INT8_ROWS), no autograd (the kernels have no backward)."""
    return (
        x.is_cpu
        and x.dtype == torch.float32
        and x.numel() <= max_rows * x.size(-1)
        and not torch.is_grad_enabled()
        and ready()
    )


def f32_linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (M, K) @ weight (N, K)^T -> (M, N), all float32."""
    if torch.compiler.is_compiling():
        return _f32_linear_op(x, weight)
    return _f32_run(x, weight)


def int8_linear(x: Tensor, qweight: Tensor, scales: Tensor, eps: float = 0.0) -> Tensor:
    """x (M, K) float32 @ (qweight (N, K) int8 * scales (N,) float32 [:, None])^T -> (M, N) float32.

    eps > 0 RMS-normalizes each row of x first, x / sqrt(mean(x^2) + eps), without its weight (that is
    folded into qweight, see `tinylm.quantize`).
    """
    if torch.compiler.is_compiling():
        return _int8_linear_op(x, qweight, scales, eps)
    return _int8_run(x, qweight, scales, eps)


def _check(x: Tensor, weight: Tensor, dtype: torch.dtype) -> ctypes.CDLL:
    """The library, after checking what the C code takes for granted (ValueError otherwise)."""
    lib = library()
    if lib is None:
        raise ValueError("tinylm's CPU kernels are not built (see the warning above)")
    if x.dim() != 2 or not 0 < x.size(0) <= MAX_M or x.dtype != torch.float32 or not x.is_cpu:
        raise ValueError(
            f"x: expected float32 (M, K) on the CPU with M <= {MAX_M}, got {x.dtype} {tuple(x.shape)}"
        )
    if (
        weight.dim() != 2
        or weight.size(1) != x.size(1)
        or weight.dtype != dtype
        or not weight.is_contiguous()
    ):
        raise ValueError(
            f"weight: expected contiguous {dtype} (N, {x.size(1)}), got {weight.dtype} {tuple(weight.shape)}"
        )
    return lib


def _f32_run(x: Tensor, weight: Tensor) -> Tensor:
    lib = _check(x, weight, torch.float32)
    x = x.contiguous()
    (M, K), N = x.shape, weight.size(0)
    y = torch.empty(M, N, dtype=torch.float32)
    lib.tinylm_f32_linear(x.data_ptr(), weight.data_ptr(), y.data_ptr(), M, N, K, torch.get_num_threads())
    return y


def _int8_run(x: Tensor, qweight: Tensor, scales: Tensor, eps: float) -> Tensor:
    lib = _check(x, qweight, torch.int8)
    if scales.shape != (qweight.size(0),) or scales.dtype != torch.float32 or not scales.is_contiguous():
        raise ValueError(
            f"scales: expected float32 ({qweight.size(0)},), got {scales.dtype} {tuple(scales.shape)}"
        )
    x = x.contiguous()
    (M, K), N = x.shape, qweight.size(0)
    y = torch.empty(M, N, dtype=torch.float32)
    lib.tinylm_int8_linear(
        x.data_ptr(),
        qweight.data_ptr(),
        scales.data_ptr(),
        y.data_ptr(),
        M,
        N,
        K,
        eps,
        torch.get_num_threads(),
    )
    return y


@torch.library.custom_op("tinylm::f32_linear", mutates_args=(), device_types="cpu")
def _f32_linear_op(x: Tensor, weight: Tensor) -> Tensor:
    return _f32_run(x, weight)


@_f32_linear_op.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty(x.size(0), weight.size(0))


@torch.library.custom_op("tinylm::int8_linear", mutates_args=(), device_types="cpu")
def _int8_linear_op(x: Tensor, qweight: Tensor, scales: Tensor, eps: float) -> Tensor:
    return _int8_run(x, qweight, scales, eps)


@_int8_linear_op.register_fake
def _(x: Tensor, qweight: Tensor, scales: Tensor, eps: float) -> Tensor:
    return x.new_empty(x.size(0), qweight.size(0))


def library_path() -> Path:
    """Where the built library for this source, these flags and this CPU lives."""
    from tinylm.paths import tinylm_home

    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(FLAGS).encode())
    key.update(_cpu_flags().encode())
    return tinylm_home() / "kernels" / f"cpu_kernels-{platform.machine()}-{key.hexdigest()[:16]}.so"


def _load() -> ctypes.CDLL | None:
    path = library_path()
    if not path.exists():
        error = _build(path)
        if error:
            warnings.warn(f"tinylm: CPU kernels not built ({error}); using PyTorch's", stacklevel=4)
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        warnings.warn(f"tinylm: cannot load {path} ({e}); using PyTorch's kernels", stacklevel=4)
        return None
    pointers, sizes = [ctypes.c_void_p], [ctypes.c_long] * 3
    lib.tinylm_f32_linear.restype = None
    lib.tinylm_f32_linear.argtypes = pointers * 3 + sizes + [ctypes.c_int]
    lib.tinylm_int8_linear.restype = None
    lib.tinylm_int8_linear.argtypes = pointers * 4 + sizes + [ctypes.c_float, ctypes.c_int]
    return lib


def _build(path: Path) -> str | None:
    """Compile SOURCE into `path` (atomically: a build beside it, then a rename); an error text or None."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return "no C compiler (cc) on PATH"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out = Path(tmp) / path.name
            try:
                done = subprocess.run(
                    [cc, *FLAGS, str(SOURCE), "-o", str(out), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"{cc}: {e}"
            if done.returncode != 0:
                return f"{cc} exited with {done.returncode}: {done.stderr.strip()[-300:]}"
            os.replace(out, path)
    except OSError as e:  # an unwritable TINYLM_HOME
        return f"cannot write {path.parent}: {e}"
    return None


def _cpu_flags() -> str:
    """The CPU's feature flags (the library is built for this CPU with -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
