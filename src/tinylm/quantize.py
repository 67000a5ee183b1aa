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
missing the weights are dequantized for each product instead (correct, not faster). Decoding on the CPU
(float32, one or two rows) runs tinylm's own kernel instead, 1.5-1.7x as fast (`tinylm.cpu_kernels`), with
float32 activations; so on the CPU a row's logits can move by ~0.2% with the number of rows decoded beside
it (1-2 rows against 3 or more, e.g. in `tinylm serve`), which can flip a near-tie.

A tied `lm_head` (SmolLM2: 49152 x 576, a fifth of the model) shares one int8 table with the token
embedding: the table's rows are the embedding vectors, so the per-output-channel scales of `lm_head` are
per-row scales of the embedding, and a lookup dequantizes only the rows it reads.

Two rewrites cut the small operations around the products, which decoding on a CPU pays per token as
much as the products themselves: a SwiGLU's gate and up matrices become one int8 matrix (`Int8SwiGLU`),
and in a pre-norm RMSNorm model (Llama, SmolLM2) each block's norm weights are folded into the columns of
the matrices that read the norm's output, the norms themselves into those products (`_fold_norms`,
`Int8Linear.norm_eps`). The folded weights are quantized as they are, so the perplexity moves no more
(SmolLM2-135M on Shakespeare: +0.94% against float32).

What this module does not do: no training (the int8 tensors are buffers, not parameters), no saving of
quantized checkpoints (quantizing a loaded model takes about a second, so `tinylm.load(..., quantize="int8")`
quantizes at every load from the float checkpoint), no int4, no activation quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm import cpu_kernels
from tinylm.errors import TinylmError
from tinylm.model import GPT, Linear, RMSNorm, SwiGLU

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
    if any(isinstance(m, Int8Linear | Int8Embedding | Int8SwiGLU) for m in model.modules()):
        raise TinylmError("quantize: the model is already quantized")
    tied = _tied_head(model)
    _fold_norms(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, SwiGLU) and _plain(module.gate, module.up):
            _replace(model, name, Int8SwiGLU.from_swiglu(module))
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
    """y = x W^T + b with W stored as int8 `qweight` (out, in) and per-output-channel `scales` (out,).

    norm_eps > 0: the layer takes its input before an RMSNorm whose weight is folded into W's columns
    (`_fold_norms`), and normalizes it itself, x / sqrt(mean(x^2) + norm_eps): in the CPU decoding kernel
    that costs nothing, where a separate norm was 60 small operations per token.
    """

    def __init__(self, qweight: Tensor, scales: Tensor, bias: Tensor | None, norm_eps: float = 0.0):
        super().__init__()
        self.norm_eps = norm_eps
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)
        self.register_buffer("scales_f32", scales.float(), persistent=False)  # for tinylm.cpu_kernels

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(*_int8_rows(linear.weight), bias, getattr(linear, "norm_eps", 0.0))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out) in x's dtype."""
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if cpu_kernels.decoding(x, cpu_kernels.INT8_ROWS):  # tinylm's own kernel, 1.5-1.7x aten's speed there
            y = cpu_kernels.int8_linear(x2, self.qweight, self.scales_f32, self.norm_eps)
        else:
            y = self._product(x2)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _product(self, x: Tensor) -> Tensor:
        """x (N, in) -> (N, out) through aten's int8 kernel (or dequantized weights)."""
        if self.norm_eps:  # as RMSNorm does: in float32, then back to x's dtype
            xf = x.float()
            x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.norm_eps)).to(x.dtype)
        return int8_matmul(x.to(self.scales.dtype), self.qweight, self.scales)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
            + (f", norm_eps={self.norm_eps}" if self.norm_eps else "")
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
        return cls(*_int8_rows(embedding.weight), embedding.weight.dtype)

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


class Int8SwiGLU(nn.Module):
    """A quantized `SwiGLU`: down(silu(gate(x)) * up(x)) with gate and up stacked in one int8 matrix,
    so decoding reads both in one product."""

    def __init__(self, gate_up: Int8Linear, down: Int8Linear):
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.hidden = gate_up.out_features // 2

    @classmethod
    @torch.no_grad()
    def from_swiglu(cls, mlp: SwiGLU) -> Int8SwiGLU:
        gate, up = mlp.gate, mlp.up
        bias = None if gate.bias is None else torch.cat((gate.bias, up.bias)).detach()
        rows = _int8_rows(torch.cat((gate.weight, up.weight)))  # (2 * hidden, in)
        gate_up = Int8Linear(*rows, bias, getattr(gate, "norm_eps", 0.0))
        return cls(gate_up, Int8Linear.from_linear(mlp.down))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


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


def _int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """`quantize_rows` of a weight, with the scale dtype of the int8 kernel on its device."""
    _probe(weight.device)
    return quantize_rows(weight, _kernel_dtype(weight.device, weight.dtype))


def _plain(*modules: nn.Module) -> bool:
    """Whether every module is a plain Linear (tinylm's or torch's), not a wrapper such as LoRA's."""
    return all(type(m) in (nn.Linear, Linear) for m in modules)


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


@torch.no_grad()
def _fold_norms(model: nn.Module) -> None:
    """In a pre-norm RMSNorm GPT (Llama, SmolLM2), fold each block's norm weights into the layers that
    read the norm's output, and drop the norms: norm(x) W^T = (x / rms(x)) (W diag(w))^T, so the
    attention's qkv and the MLP's first layers take x itself (marked `norm_eps`, see Int8Linear).
    A norm is folded only when every layer reading it is a plain nn.Linear (not a LoRA wrapper). The
    final norm stays: `embeddings()` returns its output, and a tied head's columns cannot be rescaled."""
    if not isinstance(model, GPT) or model.config.norm != "rmsnorm" or not model.config.prenorm:
        return
    for block in model.h:
        mlp = [block.mlp.gate, block.mlp.up] if isinstance(block.mlp, SwiGLU) else [block.mlp.fc]
        for name, readers in (("ln_1", [block.attn.qkv]), ("ln_2", mlp)):
            norm = getattr(block, name)
            if isinstance(norm, RMSNorm) and _plain(*readers):
                for linear in readers:
                    _fold(norm, linear)
                setattr(block, name, nn.Identity())


def _fold(norm: RMSNorm, linear: nn.Linear) -> None:
    linear.weight.mul_(norm.weight.to(linear.weight.dtype)[None, :])  # (out, in) * (1, in)
    linear.norm_eps = norm.eps


def _tied_head(model: nn.Module) -> nn.Embedding | None:
    """The embedding `wte` when `lm_head` shares its weight, else None."""
    wte, head = getattr(model, "wte", None), getattr(model, "lm_head", None)
    if isinstance(wte, nn.Embedding) and isinstance(head, nn.Linear) and head.weight is wte.weight:
        return wte
    return None


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
