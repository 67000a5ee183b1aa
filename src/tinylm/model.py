"""The tinylm language models: a configurable GPT (decoder-only Transformer) and a GRU baseline.

Read top to bottom: the config, position helpers, attention, MLP, block, the `CausalLM` Protocol, the GPT
with its static KV cache, and the GRU language model. One `GPTConfig` covers the classic variants a course
compares (learned, sinusoidal, RoPE and ALiBi positions; LayerNorm or RMSNorm; pre- or post-norm; GELU,
ReLU or SwiGLU MLPs; multi-head, grouped-query and multi-query attention), and mirrors the layouts of GPT-2
and Llama so that pretrained weights map onto it name by name.

A forward pass handles three cases: a full causal pass (training), packed rows where attention never
crosses a segment boundary (`segment_ids`), and incremental decoding into a preallocated `KVCache`.

`CausalLM` is the seam where tinylm's GPT and a transformers model (`tinylm.hf_model.HFCausalLM`) meet: the
Protocol of what the rest of tinylm may ask of a model with a KV cache. Callers ask its capabilities
(explicit positions, a static cache, a beam search or a weights layout of its own), never the class.

What this file does not do: no I/O (checkpoints, HF import live elsewhere), no tokenization, no training
loop, no sampling. Logits come back in the compute dtype; callers upcast for the loss.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm import cpu_kernels

_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa

KINDS = ("gpt", "gru")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "swiglu")


class InvalidConfig(ValueError):
    """A GPTConfig with invalid fields: `.problems` lists each (what `GPTConfig.problems` found)."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid GPTConfig:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@dataclass
class GPTConfig:
    """Every architectural choice of a tinylm model; checkpoints store it as `to_dict()`."""

    kind: Literal["gpt", "gru"] = "gpt"
    vocab_size: int = 256
    block_size: int = 256  # maximum context
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None -> n_head (MHA); 1 -> MQA; between -> GQA (must divide n_head)
    n_embd: int = 128
    head_dim: int | None = None  # None -> n_embd // n_head
    intermediate_size: int | None = None  # MLP hidden size; None -> 4 * n_embd
    pos: Literal["learned", "sinusoidal", "rope", "alibi"] = "learned"
    rope_base: float = 10000.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    prenorm: bool = True  # False -> post-norm (original Transformer): x = norm(x + f(x)), no final norm
    mlp: Literal["gelu", "gelu_tanh", "relu", "swiglu"] = "gelu"
    dropout: float = 0.0
    bias: bool = True  # bias on every Linear (except lm_head) and LayerNorm
    qkv_bias: bool | None = None  # bias on the q/k/v projection alone (Qwen2); None -> `bias`
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InvalidConfig(problems)

    def problems(self) -> list[str]:
        """Every invalid field, as messages naming the field, what was found and what is allowed."""
        out = []
        for name, allowed in (("kind", KINDS), ("pos", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            value = getattr(self, name)
            if value not in allowed:
                out.append(f"{name}={value!r} is unknown; expected one of {', '.join(allowed)}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("n_kv_head", "head_dim", "intermediate_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"{name}={value} must be >= 1 (or null for the default)")
        for name in ("rope_base", "norm_eps", "dropout"):
            if not math.isfinite(getattr(self, name)):
                out.append(f"{name}={getattr(self, name)} must be a finite number")
        if math.isfinite(self.dropout) and not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.norm_eps <= 0:  # nan and inf are refused above
            out.append(f"norm_eps={self.norm_eps} must be > 0")
        if self.kind != "gpt" or self.n_head < 1:
            return out
        if self.n_kv_head is not None and self.n_kv_head >= 1 and self.n_head % self.n_kv_head:
            out.append(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if self.head_dim is None and self.n_embd % self.n_head:
            out.append(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                "change one of them or set head_dim"
            )
        if self.pos == "rope" and self.head_size % 2:
            out.append(f"pos='rope' needs an even head size, got {self.head_size}")
        if self.pos == "rope" and self.rope_base <= 0:
            out.append(f"rope_base={self.rope_base} must be > 0")
        if self.pos == "sinusoidal" and self.n_embd % 2:
            out.append(f"pos='sinusoidal' needs an even n_embd, got {self.n_embd}")
        return out

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (n_kv_head, defaulting to n_head)."""
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        """Size of one attention head (head_dim, defaulting to n_embd // n_head)."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def mlp_size(self) -> int:
        """Hidden size of the MLP (intermediate_size, defaulting to 4 * n_embd)."""
        return self.intermediate_size or 4 * self.n_embd

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict; `from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build a config from a dict, rejecting unknown keys (with the closest valid name)."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in fields]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, fields, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown GPTConfig key(s): {', '.join(hints)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------
# Positions


def sinusoidal_table(n_pos: int, dim: int) -> Tensor:
    """The original Transformer table (n_pos, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]  # (n_pos, 1)
    inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table


def rope_tables(n_pos: int, head_size: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin (n_pos, head_size) in the HF Llama "rotate_half" layout: frequencies repeated twice."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.float32), inv_freq)  # (n_pos, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (n_pos, hs)
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by cos/sin (b, 1, T, hs), computed in x's dtype like HF."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(n_head: int) -> Tensor:
    """Per-head ALiBi slopes (n_head,): geometric 2^(-8/n)... for a power of 2, interpolated otherwise."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start**i for i in range(1, n + 1)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_2(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = alibi_slopes(2 * closest)[0::2][: n_head - closest]
    return torch.cat((torch.tensor(power_of_2(closest)), extra))


def split_segments(segment_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Positions that restart at 0 at each segment, and a segment index per token; both (B, T).

    A segment is a run of equal ids, so [7, 7, 7, 2, 2] -> positions [0, 1, 2, 0, 1], index [1, 1, 1, 2, 2].
    """
    B, T = segment_ids.shape
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    last_start = torch.where(starts, idx, 0).cummax(dim=1).values  # (B, T)
    return idx - last_start, starts.cumsum(dim=1)


# ----------------------------------------------------------------------------------------------------------
# Layers


_WEIGHTS_FOLLOW = contextvars.ContextVar("tinylm_weights_follow", default=False)


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Build models whose every weight is loaded next: their random initialisation is skipped (for
    SmolLM2-135M it was most of the load time). The caller must load all parameters, as `load_weights`
    does (it refuses a file that misses any)."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict), except when decoding on the CPU: up to 8 float32 rows
    without autograd run tinylm's bandwidth-bound kernel (`tinylm.cpu_kernels`), 1.5-4x F.linear there.
    Training, longer prefills, GPUs and other dtypes take F.linear."""

    def reset_parameters(self) -> None:
        if not _WEIGHTS_FOLLOW.get():  # else the weights are about to be loaded
            super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if w.dtype == torch.float32 and w.is_contiguous() and cpu_kernels.decoding(x, cpu_kernels.F32_ROWS):
            y = cpu_kernels.f32_linear(x.reshape(-1, self.in_features), w)
            y = y.view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """nn.Embedding, whose random init `weights_follow` skips."""

    def reset_parameters(self) -> None:
        if not _WEIGHTS_FOLLOW.get():
            super().reset_parameters()


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32 and cast back (like HF LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and not torch.compiler.is_compiling():  # eager: one fused kernel
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with grouped k/v heads, one fused `qkv` projection laid out [q | k | v]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        qkv_size = (self.n_head + 2 * self.n_kv_head) * self.head_size
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        self.qkv = Linear(config.n_embd, qkv_size, bias=qkv_bias)
        self.proj = Linear(self.n_head * self.head_size, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        input_pos: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C).

        rope: cos/sin (b, 1, T, hs) or None. mask: bool (allowed) or float (added) broadcastable to
        (B, nh, T, S), or None for plain causal attention. kv: this layer's cache tensors
        (B, n_kv_head, max_len, hs), written in place at input_pos (T,).
        """
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_size
        qk, v = self.qkv(x).split([(nh + nkv) * hs, nkv * hs], dim=-1)
        qk = qk.view(B, T, nh + nkv, hs).transpose(1, 2)  # (B, nh + nkv, T, hs): q heads, then k heads
        if rope is not None:
            qk = apply_rope(qk, *rope)  # q and k rotate alike: one pass
        q, k = qk.split([nh, nkv], dim=1)  # (B, nh, T, hs), (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if kv is not None:
            cache_k, cache_v = kv
            cache_k.index_copy_(2, input_pos, k.to(cache_k.dtype))
            cache_v.index_copy_(2, input_pos, v.to(cache_v.dtype))
            k, v = cache_k.to(q.dtype), cache_v.to(q.dtype)  # (B, nkv, max_len, hs)
        gqa = {}
        if nkv != nh and _SDPA_GQA:  # kv head i serves query heads i*g .. (i+1)*g - 1, like HF repeat_kv
            gqa = {"enable_gqa": True}
        elif nkv != nh:  # torch < 2.5: expand the kv heads (a copy)
            k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        assert mask is not None or k.size(2) == T, "attention over a cache needs an explicit mask"
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None,
            **gqa,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh*hs)
        y = self.proj(y)
        return self.resid_drop(y) if self.dropout else y


class MLP(nn.Module):
    """fc -> activation -> proj (GPT-2 style)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = Linear(config.n_embd, config.mlp_size, bias=config.bias)
        self.act = {"gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU()}[
            config.mlp
        ]
        self.proj = Linear(config.mlp_size, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Llama style)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate = Linear(config.n_embd, config.mlp_size, bias=config.bias)
        self.up = Linear(config.n_embd, config.mlp_size, bias=config.bias)
        self.down = Linear(config.mlp_size, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(F.silu(self.gate(x)) * self.up(x))
        return self.drop(y) if self.drop.p else y


class Block(nn.Module):
    """Attention then MLP, each in a residual branch; pre-norm x + f(norm(x)) or post-norm norm(x + f(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.prenorm = config.prenorm
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        kv: tuple[Tensor, Tensor] | None = None,
        input_pos: Tensor | None = None,
    ) -> Tensor:
        if self.prenorm:
            x = x + self.attn(self.ln_1(x), rope, mask, kv, input_pos)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, rope, mask, kv, input_pos))
        return self.ln_2(x + self.mlp(x))


# ----------------------------------------------------------------------------------------------------------
# The seam


@runtime_checkable
class CausalLM(Protocol):
    """What the rest of tinylm may ask of a causal LM with a KV cache: tinylm's `GPT`, or a transformers
    model behind `tinylm.hf_model.HFCausalLM`. Callers ask these members, never the class, and read a
    capability once per call, not per decode step. `isinstance(model, CausalLM)` checks that every member
    is there. The GRU baseline has no cache and is no CausalLM: callers run it on the whole sequence.

    The capabilities:

    - takes_positions: forward places tokens by `positions`, so prompts of different lengths share one
      left-padded batch (else each runs alone).
    - static_cache: new_cache() gives a `KVCache`, fixed-shape tensors whose rows and slots callers may cut
      into views, move and reorder (one cache shared by a batch of requests; beams following their rows);
      False: an opaque cache that only forward reads and writes, one per generation.
    - beam_search: the model's own beam search, with the arguments and result of
      `tinylm.generate.beam_search`; None: that one runs on the static cache.
    - save_pretrained(directory): writes the model as a Hugging Face model directory in its own layout
      (checkpoints and `tinylm export` store it so); None: its weights are its state dict (tinylm's
      model.safetensors; `tinylm.convert` maps them to a Hugging Face layout).
    """

    config: Any  # GPTConfig or HFModelConfig: vocab_size, block_size (the context), n_embd, to_dict()
    takes_positions: bool
    static_cache: bool
    beam_search: Callable[..., list[tuple[list[int], float]]] | None
    save_pretrained: Callable[[str | Path], None] | None

    def forward(
        self,
        idx: Tensor,
        *,
        input_pos: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: Any = None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """idx (B, T) -> logits (B, T, vocab_size); the keywords as `GPT.forward` documents them."""

    def new_cache(self, batch_size: int, max_len: int, *, device: Any = None, dtype: Any = None) -> Any:
        """An empty cache for `batch_size` rows and positions 0..max_len-1, to pass to forward."""

    def embeddings(self, idx: Tensor, *, segment_ids: Tensor | None = None) -> Tensor:
        """idx (B, T) -> (B, T, n_embd): the hidden states after the final norm."""


# ----------------------------------------------------------------------------------------------------------
# The GPT


class KVCache:
    """A static, preallocated cache: one (k, v) pair per layer, each (B, n_kv_head, max_len, head_size).

    Slot j holds the keys/values of absolute position j; a forward pass writes its tokens at `input_pos`
    and queries see slots j <= their position, so decoding runs with fixed shapes. Reusing a cache for a
    new prompt needs no reset: the prompt's writes start again at position 0.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (batch_size, n_kv_head, max_len, head_size)
        self.batch_size, self.max_len = batch_size, max_len
        self.layers = [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(n_layer)
        ]


class GPT(nn.Module):
    """Decoder-only Transformer: wte (+ wpe) -> blocks h[i] -> ln_f -> lm_head. A `CausalLM`."""

    takes_positions = True
    static_cache = True
    beam_search = None  # tinylm.generate.beam_search runs on its cache
    save_pretrained = None  # its state dict is its checkpoint; tinylm.convert.export_hf maps it to HF

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.kind == "gpt", f"GPT needs kind='gpt', got {config.kind!r} (use build_model)"
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = Embedding(config.block_size, config.n_embd)
        elif config.pos == "sinusoidal":
            self.register_buffer(
                "sinusoid", sinusoidal_table(config.block_size, config.n_embd), persistent=False
            )
        elif config.pos == "rope":
            cos, sin = rope_tables(config.block_size, config.head_size, config.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif config.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_head), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config) if config.prenorm else nn.Identity()
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """nanoGPT init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 * n_layer)."""
        if _WEIGHTS_FOLLOW.get():
            return
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def forward(
        self,
        idx: Tensor,
        *,
        input_pos: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size) in the compute dtype.

        input_pos (T,): absolute positions of the tokens (default 0..T-1); required with `cache`.
        segment_ids (B, T): packed sequences; attention stays inside a run of equal ids and positions
        restart at each run. cache: a `new_cache()` to write this pass's keys/values into and attend over.
        Left-padded batches: positions (B, T) are each row's own token positions (for the position
        encoding; `input_pos` still names the cache slots), and key_mask (B, S) marks the real tokens
        among the S keys (S = cache.max_len with a cache, else T).
        """
        return self.lm_head(self._hidden(idx, input_pos, segment_ids, cache, positions, key_mask))

    def embeddings(
        self,
        idx: Tensor,
        *,
        input_pos: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """idx (B, T) -> (B, T, n_embd): per-token hidden states after the final norm, the input of lm_head;
        the keywords as in `forward`. A caller that needs the logits of a few positions applies lm_head to
        those alone."""
        return self._hidden(idx, input_pos, segment_ids, cache, positions, key_mask)

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A zeroed KVCache for `batch_size` rows and positions 0..max_len-1 (device/dtype of the model)."""
        c = self.config
        assert 0 < max_len <= c.block_size, f"cache max_len={max_len} must be in 1..block_size={c.block_size}"
        weight = self.wte.weight
        return KVCache(
            c.n_layer,
            batch_size,
            c.kv_heads,
            max_len,
            c.head_size,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    def _hidden(
        self,
        idx: Tensor,
        input_pos: Tensor | None,
        segment_ids: Tensor | None,
        cache: KVCache | None,
        positions: Tensor | None,
        key_mask: Tensor | None,
    ) -> Tensor:
        c = self.config
        T = idx.size(1)
        assert idx.size(1) <= c.block_size, f"sequence of length {T} is longer than block_size={c.block_size}"
        if cache is not None and input_pos is None:
            raise ValueError("forward with a cache needs input_pos, the positions of the new tokens")
        if segment_ids is not None and (cache is not None or input_pos is not None):
            raise ValueError("segment_ids cannot be combined with a cache or input_pos")
        seg = None
        if segment_ids is not None:
            assert segment_ids.shape == idx.shape, f"segment_ids {segment_ids.shape} != idx {idx.shape}"
            pos, seg = split_segments(segment_ids)  # (B, T) each
        elif input_pos is not None:
            assert input_pos.shape == (T,), f"input_pos must have shape ({T},), got {tuple(input_pos.shape)}"
            pos = input_pos[None]  # (1, T)
        else:
            pos = torch.arange(T, device=idx.device)[None]  # (1, T)

        emb_pos = pos
        if positions is not None:
            assert positions.shape == idx.shape, f"positions {positions.shape} != idx {idx.shape}"
            emb_pos = positions.clamp(min=0)  # (B, T); padding positions are masked out anyway
        x = self.wte(idx)  # (B, T, C)
        if c.pos == "learned":
            x = x + self.wpe(emb_pos)
        elif c.pos == "sinusoidal":
            x = x + self.sinusoid[emb_pos].to(x.dtype)
        x = self.drop(x)
        rope = (self.rope_cos[emb_pos][:, None], self.rope_sin[emb_pos][:, None]) if c.pos == "rope" else None
        mask = self._attn_mask(pos, seg, cache, key_mask)
        for i, block in enumerate(self.h):
            x = block(x, rope, mask, cache.layers[i] if cache is not None else None, input_pos)
        return self.ln_f(x)

    def _attn_mask(
        self, pos: Tensor, seg: Tensor | None, cache: KVCache | None, key_mask: Tensor | None = None
    ) -> Tensor | None:
        """None for plain causal attention (SDPA's fast path), else a mask broadcastable to (B, nh, T, S).

        Bool (True = may attend) for causal + segment + cache masks; float (0 or ALiBi bias, -inf where
        masked) with ALiBi. pos (b, T) are the query positions.
        """
        if cache is None and seg is None and key_mask is None and self.config.pos != "alibi":
            return None
        T = pos.size(1)
        if cache is None:  # causal by index within the pass; keys have the queries' positions
            allowed = torch.ones(T, T, dtype=torch.bool, device=pos.device).tril()[None]  # (1, T, T)
            if seg is not None:
                allowed = allowed & (seg[:, :, None] == seg[:, None, :])  # (B, T, T)
            key_pos = pos  # (b, T)
        else:  # cache slot j holds position j
            key_pos = torch.arange(cache.max_len, device=pos.device)[None]  # (1, S)
            allowed = key_pos[:, None, :] <= pos[:, :, None]  # (1, T, S)
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, :]  # (B, T, S)
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padding query attends anywhere, never NaN
        if self.config.pos != "alibi":
            return allowed[:, None]  # (b, 1, T, S)
        distance = (pos[:, :, None] - key_pos[:, None, :]).float()  # (b, T, S)
        bias = -self.alibi_slopes[None, :, None, None] * distance[:, None]  # (b, nh, T, S)
        return bias.masked_fill(~allowed[:, None], float("-inf"))


# ----------------------------------------------------------------------------------------------------------
# The recurrent baseline


class GRULM(nn.Module):
    """wte -> multi-layer GRU -> norm -> lm_head. No positions, no attention, no cache."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.kind == "gru", f"GRULM needs kind='gru', got {config.kind!r} (use build_model)"
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.gru = nn.GRU(
            config.n_embd,
            config.n_embd,
            num_layers=config.n_layer,
            batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.ln_f = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        else:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: Tensor,
        *,
        input_pos: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """idx (B, T) -> logits (B, T, vocab_size). input_pos is ignored (the recurrence knows the order);
        a cache or segment_ids raise ValueError: callers recompute the whole sequence."""
        if cache is not None or segment_ids is not None:
            raise ValueError(
                "the GRU model supports neither a KV cache nor segment_ids; pass the full sequence"
            )
        return self.lm_head(self.embeddings(idx))

    def embeddings(self, idx: Tensor, *, segment_ids: Tensor | None = None) -> Tensor:
        """idx (B, T) -> (B, T, n_embd): GRU outputs after the norm, the input of lm_head."""
        if segment_ids is not None:
            raise ValueError("the GRU model does not support segment_ids")
        out, _ = self.gru(self.wte(idx))  # (B, T, C)
        return self.ln_f(out)


def build_model(config: GPTConfig) -> nn.Module:
    """The model for config.kind: GPT for "gpt", GRULM for "gru"."""
    return GRULM(config) if config.kind == "gru" else GPT(config)


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters, counting tied (shared) tensors once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
