"""Weight-only int8 quantization for inference: every `nn.Linear` and the (tied) embedding table become int8.

`quantize(model, "int8")` rewrites a loaded model in place. Each weight matrix W (out, in) is stored as int8
values q and one scale per output channel s (out,), W ≈ q * s[:, None], with s = max|W[i, :]| / 127
(symmetric, round to nearest). Activations stay in floating point, so only the weights lose precision
(under 1% relative error per matrix product) and the model reads 4x fewer weight bytes per token than float32,
which is what batch-1 decoding is bound by.

The product runs on PyTorch's own weight-only int8 kernel `aten._weight_int8pack_mm` wherever it exists
(CPU, recent CUDA): it reads the int8 weights directly and multiplies the scales into the float32
accumulator. The CPU kernel is fast only for bfloat16 activations, so on the CPU a float32 model's
activations are cast to bfloat16 for the product and the result back to float32. Where the kernel is
missing the weights are dequantized for each product instead (correct, not faster).

A tied `lm_head` (SmolLM2: 49152 x 576, a fifth of the model) shares one int8 table with the token
embedding: the table's rows are the embedding vectors, so the per-output-channel scales of `lm_head` are
per-row scales of the embedding, and a lookup dequantizes only the rows it reads.

What this module does not do: no training (the int8 tensors are buffers, not parameters), no saving of
quantized checkpoints (quantizing a loaded model takes about a second, so `tinylm.load(..., quantize="int8")`
quantizes at every load from the float checkpoint), no int4, no activation quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.errors import TinylmError

METHODS = ("none", "int8")


def quantize(model: nn.Module, method: str = "int8") -> nn.Module:
    """Quantize `model` in place for inference and return it; `method` is "int8" or "none" (unchanged).

    Every nn.Linear becomes an `Int8Linear`; tinylm's token embedding `wte` becomes an `Int8Embedding`,
    sharing its int8 table with `lm_head` when the two are tied (a model run through transformers keeps its
    embedding and gets its own int8 head). Runs on the model's device; the activations keep the model's
    dtype. Raises TinylmError for an unknown method or an already quantized model.
    """
    check_method(method)
    if method == "none":
        return model
    if any(isinstance(m, Int8Linear | Int8Embedding) for m in model.modules()):
        raise TinylmError("quantize: the model is already quantized")
    tied = _tied_head(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and not (tied is not None and name == "lm_head"):
            _replace(model, name, Int8Linear.from_linear(module))
    if tied is not None:
        embedding = Int8Embedding.from_embedding(tied)
        model.wte = embedding
        model.lm_head = embedding.as_linear()
    elif isinstance(getattr(model, "wte", None), nn.Embedding):
        model.wte = Int8Embedding.from_embedding(model.wte)
    return model


def check_method(method: str) -> None:
    """Raise TinylmError unless `method` is one of METHODS."""
    if method not in METHODS:
        raise TinylmError(f"quantize: expected one of {', '.join(METHODS)}, found {method!r}")


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights (its state_dict: parameters and saved buffers, not tables such as RoPE's
    that are rebuilt from the config), counting tensors shared by tied modules once."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()
    }
    return sum(storages.values())


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 `qweight` (out, in) and per-output-channel `scales` (out,)."""

    def __init__(self, qweight: Tensor, scales: Tensor, bias: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        weight = linear.weight
        _probe(weight.device)
        qweight, scales = quantize_rows(weight, _kernel_dtype(weight.device, weight.dtype))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(qweight, scales, bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)  # (N, in)
        y = int8_matmul(x2, self.qweight, self.scales)  # (N, out)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Int8Embedding(nn.Module):
    """A lookup table stored as int8 rows `qweight` (num, dim) with per-row `scales` (num,).

    There is no dense table: `weight` is an empty (0, dim) tensor of the compute dtype on the table's
    device, so code that reads `wte.weight.dtype` / `.device` (GPT.new_cache, the decode fast path, beam
    search) keeps working, and code that would read its values fails loudly instead of silently.
    """

    def __init__(self, qweight: Tensor, scales: Tensor, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.dtype = dtype
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        weight = embedding.weight
        _probe(weight.device)
        qweight, scales = quantize_rows(weight, _kernel_dtype(weight.device, weight.dtype))
        return cls(qweight, scales, weight.dtype)

    @property
    def weight(self) -> Tensor:
        return torch.empty(0, self.embedding_dim, dtype=self.dtype, device=self.qweight.device)

    def forward(self, idx: Tensor) -> Tensor:
        """idx (...) token ids -> (..., dim) in the compute dtype, dequantizing only the rows looked up."""
        rows = F.embedding(idx, self.qweight).to(self.dtype)  # (..., dim)
        return rows * self.scales[idx].to(self.dtype).unsqueeze(-1)

    def as_linear(self) -> Int8Linear:
        """The tied output head x -> x table^T, sharing this table's int8 rows and scales."""
        return Int8Linear(self.qweight, self.scales, None)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


@torch.no_grad()
def quantize_rows(weight: Tensor, scale_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (rows, cols) float -> int8 (rows, cols) and scales (rows,) in scale_dtype.

    The int8 values are rounded against the scales as stored (e.g. after rounding them to bfloat16), so
    the only error left is the rounding of each weight to its nearest of 255 levels.
    """
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def int8_matmul(x: Tensor, qweight: Tensor, scales: Tensor) -> Tensor:
    """x (N, in) @ (qweight * scales[:, None])^T -> (N, out); x and scales share a dtype."""
    if _KERNEL.get(x.device.type, False):
        return torch.ops.aten._weight_int8pack_mm(x, qweight, scales)
    return F.linear(x, qweight.to(x.dtype)) * scales


_KERNEL: dict[str, bool] = {}  # device type -> whether aten._weight_int8pack_mm runs there; see _probe


def _probe(device: torch.device) -> None:
    """Record whether this PyTorch has the int8 kernel on `device` (CPU: always; CUDA: since ~2.9)."""
    if device.type not in _KERNEL:
        x = torch.zeros(1, 8, dtype=_kernel_dtype(device, torch.float32), device=device)
        try:
            torch.ops.aten._weight_int8pack_mm(x, torch.zeros(8, 8, dtype=torch.int8, device=device), x[0])
            _KERNEL[device.type] = True
        except (RuntimeError, NotImplementedError):
            _KERNEL[device.type] = False


def _kernel_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The activation dtype of the int8 product: bfloat16 on the CPU (its fast kernel), else the model's."""
    return torch.bfloat16 if device.type == "cpu" else dtype


def _tied_head(model: nn.Module) -> nn.Embedding | None:
    """The embedding `wte` when `lm_head` shares its weight, else None."""
    wte, head = getattr(model, "wte", None), getattr(model, "lm_head", None)
    if isinstance(wte, nn.Embedding) and isinstance(head, nn.Linear) and head.weight is wte.weight:
        return wte
    return None


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
