"""How much memory a tinylm model needs to train and to generate, estimated from its config alone.

`training_memory(config, workload)` adds up what one process of our training loop (`tinylm.train.loop` on
Lightning Fabric) holds at its peak, and `inference_memory` what generation holds:

    weights          parameters and buffers: fp32, or bf16 with "bf16-true" (Fabric converts the module)
    reference        DPO with a frozen reference copy: its weights and buffers, as the weights (no gradients,
                     no optimizer states; its no-grad forward is over before the model's backward starts).
                     A DPO step runs 2 rows per pair, which the caller's Workload counts
    autocast copies  "bf16-mixed"/"16-mixed": autocast casts each Linear weight to 16 bits in the forward
                     and autograd keeps the copy until that layer's backward (2 bytes per Linear weight);
                     the fp32 weights stay the master copy that AdamW updates
    gradients        one per trainable parameter, in the parameter dtype (fp32 under mixed precision)
    optimizer        AdamW's exp_avg and exp_avg_sq, `zeros_like(param)`: 8 bytes per trainable parameter,
                     or 4 with "bf16-true" (bf16 states: there is no fp32 master copy in that mode)
    activations      the tensors autograd saves for the backward, op by op (`layer_activations`): the
                     residual stream and the norms in fp32 under autocast, matmul inputs in 16 bits;
                     attention through SDPA keeps no T x T scores on its fused kernels (flash /
                     memory-efficient, also the CPU flash kernel), but the math kernel, which runs e.g. on
                     the CPU with attention dropout, keeps the probabilities of every head
    loss buffers     `compute_loss` upcasts the logits: the fp32 log-softmax over B x T x V is saved, and
                     its backward holds it with two more fp32 B x T x V gradients
    cuBLAS workspaces  on CUDA, PyTorch's per-thread cuBLAS workspaces (`cublas_workspaces`)

The peak is found by replaying the backward pass: every op, last to first, frees what it saved and hands a
gradient to the op before it, while parameter gradients pile up; the optimizer step (weights, gradients
and states at once, plus the CPU AdamW's temporaries) is the other candidate. In 32-true the weights,
gradients and AdamW states are 16 bytes per parameter; the seed's rule of thumb (24 bytes, 6x the fp32
weights, ~24 GB for 1B parameters) is what the replay gives a 1B model at batch 2 x 1024 tokens, while at
batch 1 the peak is the end of the backward at ~16 bytes per parameter.

`measure_training_peak` (`tinylm.train.fits`) runs real training steps through Fabric and reports the
measured peak, for the tests and `bench/memory.py`; `check_fits` there is what `tinylm train` calls before
the first step, and `tinylm.tools.memory` prints the `estimate-memory` report. This module is the
arithmetic alone: it reads no file and builds no model.

What this module does not do: no estimate for torch.compile (its fusions usually save activation memory;
not measured here), nor for the CUDA context and the caching allocator's free blocks, which sit outside
`torch.cuda.max_memory_allocated`; the GRU baseline's activations are a coarser count (aten's CPU cell).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

import torch

from tinylm.errors import TinylmError
from tinylm.model import _SDPA_GQA, GPTConfig, build_model, count_params

GiB = 1024**3


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a Fabric precision setting keeps."""

    name: str
    param: int  # weights, gradients and AdamW states
    act: int  # matmul inputs and outputs
    residual: int  # the residual stream and norm outputs (autocast keeps them in fp32)
    autocast: bool


TRAIN_PRECISIONS = {
    "32-true": Precision("32-true", 4, 4, 4, False),
    "bf16-mixed": Precision("bf16-mixed", 4, 2, 4, True),
    "16-mixed": Precision("16-mixed", 4, 2, 4, True),
    "bf16-true": Precision("bf16-true", 2, 2, 2, False),
}
INFERENCE_DTYPES = ("fp32", "bf16", "int8")


def train_precision(name: str) -> Precision:
    """The Precision for a Fabric precision string ("32" is "32-true")."""
    name = "32-true" if name == "32" else name
    if name not in TRAIN_PRECISIONS:
        raise TinylmError(f"precision {name!r}: expected one of {', '.join(TRAIN_PRECISIONS)}")
    return TRAIN_PRECISIONS[name]


@dataclass(frozen=True)
class Workload:
    """What one training process runs: batch_size rows of seq_len tokens, on `device` ("cpu"/"cuda")."""

    batch_size: int
    seq_len: int
    precision: str = "32-true"
    device: str = "cpu"
    packed: bool = False  # rows carry segment_ids: an attention mask per row
    accumulate: int = 1  # accumulate_grad_batches: gradients live across micro-batches when > 1

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


# ----------------------------------------------------------------------------------------------------------
# Which attention kernel runs


def attention_kernel(config: GPTConfig, work: Workload) -> str:
    """Which SDPA kernel training runs: "fused" (flash, memory-efficient or cuDNN, which keep no T x T
    scores) or "math" (which keeps the probabilities of every head).

    Asks PyTorch's own dispatcher (`torch._fused_sdp_choice`) with tensors shaped like the model's when the
    device is here. Otherwise its rules (torch 2.5 to 2.11): on the CPU the flash kernel takes everything
    but dropout; on CUDA flash takes 16-bit inputs without a mask, memory-efficient takes fp32 and masks
    but not grouped-query heads, and neither takes heads larger than 256.
    """
    if work.device == "cpu" or (work.device == "cuda" and torch.cuda.is_available()):
        try:
            return _probe_kernel(config, work)
        except (RuntimeError, AttributeError, TypeError):  # a private API: fall back to the rules
            pass
    if work.device != "cuda":
        return "math" if config.dropout > 0 else "fused"
    masked = config.pos == "alibi" or work.packed
    flash = not work.precision.startswith("32") and not masked
    efficient = config.kv_heads == config.n_head or not _SDPA_GQA  # torch < 2.5: the model repeats k, v
    return "fused" if config.head_size <= 256 and (flash or efficient) else "math"


def _probe_kernel(config: GPTConfig, work: Workload) -> str:
    dtype = torch.float32 if work.precision in ("32", "32-true") else torch.bfloat16
    if work.precision.startswith("16"):
        dtype = torch.float16
    nh, nkv, hs, T = config.n_head, config.kv_heads, config.head_size, 16
    q = torch.zeros(1, nh, T, hs, device=work.device, dtype=dtype)
    kv_heads = nkv if _SDPA_GQA else nh  # torch < 2.5: the model repeats k/v itself
    k = torch.zeros(1, kv_heads, T, hs, device=work.device, dtype=dtype)
    mask = None
    if config.pos == "alibi":
        mask = torch.zeros(1, nh, T, T, device=work.device, dtype=dtype)
    elif work.packed:
        mask = torch.ones(1, 1, T, T, device=work.device, dtype=torch.bool).tril()
    extra = {"enable_gqa": True} if kv_heads != nh else {}
    choice = torch._fused_sdp_choice(q, k, k, mask, config.dropout, mask is None, **extra)
    return "math" if int(choice) == 0 else "fused"


# ----------------------------------------------------------------------------------------------------------
# The ops of one training step, as autograd sees them


@dataclass(frozen=True)
class Op:
    """One forward op's memory: what autograd saves for it and what its backward allocates."""

    name: str
    saved: int = 0  # bytes saved in the forward, freed once its backward has run
    grad_in: int = 0  # bytes of the gradient its backward hands to the op before it
    scratch: int = 0  # bytes alive only while its backward runs
    param_grad: int = 0  # bytes of parameter gradients its backward creates
    weight_copy: int = 0  # bytes of `saved` that are autocast's 16-bit copy of a weight


@dataclass(frozen=True)
class _Shape:
    B: int
    T: int
    p: Precision
    cuda: bool
    packed: bool

    @property
    def N(self) -> int:
        return self.B * self.T


def _dropout(name: str, elements: int, s: _Shape, rate: float) -> list[Op]:
    """nn.Dropout while training: the CPU keeps a float noise tensor, CUDA a bool mask; p=0 is a no-op."""
    if rate <= 0:
        return []
    a = s.p.act
    return [Op(name, saved=elements * (1 if s.cuda else a), grad_in=elements * a)]


def _norm(name: str, c: GPTConfig, s: _Shape) -> Op:
    """LayerNorm saves its input and a mean and rstd per row; our RMSNorm saves its input as fp32, the
    normalised x (residual dtype) and rsqrt per row. Both return the input's gradient in its dtype."""
    r, C, N = s.p.residual, c.n_embd, s.N
    params = C * (2 if c.norm == "layernorm" and c.bias else 1)
    if c.norm == "layernorm":
        saved, scratch = r * N * C + 8 * N, 0
    else:
        saved, scratch = (4 + r) * N * C + 4 * N, 2 * 4 * N * C  # fp32 elementwise gradients
    return Op(name, saved=saved, grad_in=r * N * C, scratch=scratch, param_grad=params * s.p.param)


def _linear(name: str, n_in: int, n_out: int, s: _Shape, *, in_bytes: int, bias: bool) -> Op:
    """A Linear saves its input in the compute dtype (under autocast a 16-bit copy of an fp32 input, and
    the 16-bit copy of its weight); its backward returns the input's gradient in the input's dtype."""
    p, N = s.p, s.N
    saved = p.act * N * n_in + (2 * n_in * n_out if p.autocast else 0)
    scratch = p.act * N * n_in if in_bytes != p.act else 0  # the 16-bit gradient before autocast's cast
    if p.autocast:
        scratch += 2 * n_in * n_out  # the 16-bit weight gradient, then added into the fp32 .grad
    params = n_in * n_out + (n_out if bias else 0)
    copy = 2 * n_in * n_out if p.autocast else 0
    return Op(name, saved, in_bytes * N * n_in, scratch, params * p.param, copy)


def _attention(c: GPTConfig, s: _Shape, kernel: str) -> list[Op]:
    """The qkv projection, RoPE, SDPA, the output projection and its dropout, for one layer."""
    a, N, B, T = s.p.act, s.N, s.B, s.T
    H, D, Dkv = c.n_head, c.n_head * c.head_size, c.kv_heads * c.head_size
    qkv_bias = c.bias if c.qkv_bias is None else c.qkv_bias
    qkv = _linear("attn.qkv", c.n_embd, D + 2 * Dkv, s, in_bytes=s.p.residual, bias=qkv_bias)
    proj = _linear("attn.proj", D, c.n_embd, s, in_bytes=a, bias=c.bias)
    qkv_out = a * N * (D + 2 * Dkv)
    if kernel == "fused":
        # q, k, v (views into the qkv output, or RoPE's rotated copies of q and k), the output and a
        # logsumexp per row and head. The output is laid out (B, T, H, hs), so `.contiguous()` before the
        # projection is free and the projection saves that same tensor: counted here, not twice.
        rope = a * N * (D + Dkv) if c.pos == "rope" else 0
        repeat = 2 * a * N * D if c.kv_heads != H and not _SDPA_GQA else 0  # torch < 2.5 repeats k, v
        saved = qkv_out + rope + repeat + a * N * D + 4 * B * H * T + _mask_per_layer(c, s)
        sdpa = Op("attn.sdpa", saved=saved, grad_in=qkv_out, scratch=4 * N * D + qkv_out)  # fp32 dq; dq/dk/dv
        proj = replace(proj, saved=proj.saved - a * N * D)
    else:
        # the composite path: dense copies of the scaled q, k and v (k and v repeated to every head) and
        # the softmax probabilities (B, H, T, T); with dropout also its noise (CPU) or mask (CUDA) and the
        # dropped probabilities. Its (B, H, T, hs) output is copied for the projection (counted there).
        scores = B * H * T * T
        drop = (scores + a * scores if s.cuda else 2 * a * scores) if c.dropout > 0 else 0
        saved = 3 * a * N * D + a * scores + drop
        sdpa = Op("attn.sdpa", saved=saved, grad_in=qkv_out, scratch=2 * a * scores + 2 * a * N * D)
    return [qkv, sdpa, proj, *_dropout("attn.resid_drop", N * c.n_embd, s, c.dropout)]


def _mask_per_layer(c: GPTConfig, s: _Shape) -> int:
    """Bytes of attention mask a fused SDPA keeps per layer: a float copy of the packed rows' bool mask,
    or the ALiBi bias cast to a 16-bit compute dtype (in fp32 the layers share one, see `_mask_once`)."""
    if c.pos == "alibi":
        rows = s.B if s.packed else 1
        return 0 if s.p.act == 4 else s.p.act * rows * c.n_head * s.T * s.T
    return s.p.act * s.B * s.T * s.T if s.packed else 0


def _mask_once(c: GPTConfig, s: _Shape, kernel: str) -> int:
    if c.pos != "alibi" or kernel != "fused" or s.p.act != 4:
        return 0
    return 4 * (s.B if s.packed else 1) * c.n_head * s.T * s.T


def _mlp(c: GPTConfig, s: _Shape) -> list[Op]:
    a, r, N, F, C = s.p.act, s.p.residual, s.N, c.mlp_size, c.n_embd
    if c.mlp == "swiglu":
        gate = _linear("mlp.gate", C, F, s, in_bytes=r, bias=c.bias)
        up = _linear("mlp.up", C, F, s, in_bytes=r, bias=c.bias)
        up = replace(up, saved=up.saved - a * N * C)  # gate already saved x
        ops = [
            gate,
            Op("mlp.silu", saved=a * N * F, grad_in=a * N * F),  # saves gate(x)
            up,
            Op("mlp.mul", saved=2 * a * N * F, grad_in=2 * a * N * F),  # saves silu(gate(x)) and up(x)
            _linear("mlp.down", F, C, s, in_bytes=a, bias=c.bias),
        ]
    else:
        act_saved = 0 if c.mlp == "relu" else a * N * F  # ReLU saves its output, which proj saves too
        ops = [
            _linear("mlp.fc", C, F, s, in_bytes=r, bias=c.bias),
            Op(f"mlp.{c.mlp}", saved=act_saved, grad_in=a * N * F),
            _linear("mlp.proj", F, C, s, in_bytes=a, bias=c.bias),
        ]
    return ops + _dropout("mlp.drop", N * C, s, c.dropout)


def _block(c: GPTConfig, s: _Shape, kernel: str) -> list[Op]:
    """One Block's ops in forward order (pre- or post-norm save the same kinds of tensors)."""
    ops = [_norm("ln_1", c, s), *_attention(c, s, kernel), _norm("ln_2", c, s), *_mlp(c, s)]
    skip = s.p.residual * s.N * c.n_embd  # the residual's gradient waits while its branch runs backward
    return [replace(o, scratch=o.scratch + skip) for o in ops]


def _gru_layer(c: GPTConfig, s: _Shape) -> Op:
    """aten's CPU GRU cell saves ~8 (B, C) tensors per step: the input and hidden projections' inputs, the
    hidden gates, the reset/update gates, the candidate and clones for two in-place products. cuDNN's
    reserve space is of the same order; this count is coarser than the GPT's."""
    a, N, C = s.p.act, s.N, c.n_embd
    params = 6 * C * C + 6 * C
    return Op(
        "gru",
        saved=8 * a * N * C,
        grad_in=s.p.residual * N * C,
        scratch=3 * a * N * C,
        param_grad=params * s.p.param,
    )


def step_ops(config: GPTConfig, work: Workload, kernel: str | None = None) -> list[Op]:
    """Every op of one training forward, in order: embeddings, blocks, final norm, head and loss."""
    c, p = config, train_precision(work.precision)
    s = _Shape(work.batch_size, work.seq_len, p, work.device == "cuda", work.packed)
    kernel = kernel or (attention_kernel(c, work) if c.kind == "gpt" else "none")
    N, V, C, g = s.N, c.vocab_size, c.n_embd, p.param
    tied_scratch = V * C * g if c.tie_embeddings else 0  # the embedding's dense grad, added into lm_head's
    ops = [Op("wte", scratch=tied_scratch, param_grad=0 if c.tie_embeddings else V * C * g)]
    if c.kind == "gpt" and c.pos == "learned":
        ops.append(Op("wpe", param_grad=c.block_size * C * g))
    if c.kind == "gpt":
        ops.append(Op("attn.mask", saved=_mask_once(c, s, kernel)))
    ops += _dropout("drop", N * C, s, c.dropout)
    for i in range(c.n_layer):
        layer = [_gru_layer(c, s)] if c.kind == "gru" else _block(c, s, kernel)
        ops += [replace(o, name=f"h.{i}.{o.name}") for o in layer]
    if c.kind == "gru" or c.prenorm:
        ops.append(_norm("ln_f", c, s))
    head = _linear("lm_head", C, V, s, in_bytes=p.residual, bias=False)
    ops.append(head)
    if p.act != 4:  # compute_loss upcasts 16-bit logits; the gradient comes back through the cast
        ops.append(Op("logits.float", grad_in=p.act * N * V))
    # log_softmax keeps its fp32 output; its backward holds that, nll_loss's gradient and its own
    ops.append(Op("loss", saved=4 * N * V, grad_in=4 * N * V, scratch=4 * N * V))
    return ops


def layer_activations(config: GPTConfig, work: Workload, kernel: str | None = None) -> dict[str, int]:
    """Bytes autograd saves for one block, by op: the per-layer activation formula, evaluated."""
    ops = step_ops(config, work, kernel)
    return {o.name[4:]: o.saved for o in ops if o.name.startswith("h.0.")}


# ----------------------------------------------------------------------------------------------------------
# Training estimate


TRAINING_PARTS = (
    "cuBLAS workspaces",
    "weights",
    "reference model (frozen copy)",
    "autocast weight copies",
    "gradients",
    "optimizer states (AdamW)",
    "activations",
    "loss buffers (fp32 logits)",
)


@dataclass
class TrainingEstimate:
    """One process's training memory in bytes; `peak` is replayed, not the sum of the parts."""

    precision: str
    kernel: str
    params: int
    trainable: int
    weights: int
    autocast_copies: int
    gradients: int
    optimizer: int
    activations: int
    loss_buffers: int
    workspaces: int
    batch: int
    peak: int
    peak_at: str
    reference: int = 0

    def parts(self) -> dict[str, int]:
        values = (
            self.workspaces,
            self.weights,
            self.reference,
            self.autocast_copies,
            self.gradients,
            self.optimizer,
        )
        return dict(zip(TRAINING_PARTS, (*values, self.activations, self.loss_buffers)))


def model_counts(config: GPTConfig) -> tuple[int, int]:
    """(parameters, buffer elements) of the model for `config`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(config)
    return count_params(model), sum(b.numel() for b in model.buffers())


def training_memory(
    config: GPTConfig,
    work: Workload,
    *,
    params: int | None = None,
    trainable: int | None = None,
    buffers: int | None = None,
    reference: int = 0,
) -> TrainingEstimate:
    """Peak memory of one training process of `config` running `work`, with its parts.

    params / trainable / buffers: counts from a real model (frozen layers, LoRA adapters); by default
    every parameter of `config` trains. reference: parameters and buffers of a frozen reference copy
    (DPO's `dpo_reference: copy`), held in the weights' dtype.
    """
    p = train_precision(work.precision)
    if params is None or buffers is None:
        counted, counted_buffers = model_counts(config)
        params = counted if params is None else params
        buffers = counted_buffers if buffers is None else buffers
    trainable = params if trainable is None else trainable
    kernel = attention_kernel(config, work) if config.kind == "gpt" else "none"
    ops = step_ops(config, work, kernel)
    share = trainable / max(params, 1)  # frozen parameters get no gradient
    ops = [replace(o, param_grad=round(o.param_grad * share)) for o in ops]

    weights = (params + buffers) * p.param
    grads = trainable * p.param
    states = 2 * trainable * p.param
    batch = (16 + (8 if work.packed else 0)) * work.tokens  # input_ids, labels (and segment_ids), int64
    workspaces = cublas_workspaces(work.device)
    ref = reference * p.param
    persistent = weights + ref + states + batch + workspaces
    peak, where = _replay(ops, persistent, grads, work.accumulate)
    step = persistent + grads + _optimizer_scratch(config, p, work.device, trainable)
    if step > peak:
        peak, where = step, "optimizer step"
    autocast = sum(o.weight_copy for o in ops)
    saved = sum(o.saved for o in ops)
    loss = 12 * work.tokens * config.vocab_size
    return TrainingEstimate(
        precision=p.name,
        kernel=kernel,
        params=params,
        trainable=trainable,
        weights=weights,
        autocast_copies=autocast,
        gradients=grads,
        optimizer=states,
        activations=saved - autocast - 4 * work.tokens * config.vocab_size,
        loss_buffers=loss,
        workspaces=workspaces,
        batch=batch,
        peak=peak,
        peak_at=where,
        reference=ref,
    )


def _replay(ops: list[Op], persistent: int, all_grads: int, accumulate: int) -> tuple[int, str]:
    """The most bytes alive during the backward, and the op whose backward reaches it.

    Walks the ops last to first: while an op's backward runs, everything still saved is alive, with the
    incoming gradient, the gradient it produces, its scratch and the parameter gradients so far. With
    gradient accumulation the gradients of earlier micro-batches are there from the start.
    """
    saved = sum(o.saved for o in ops)
    grads = all_grads if accumulate > 1 else 0
    incoming, peak, where = 0, 0, ""
    for op in reversed(ops):
        new = 0 if accumulate > 1 else op.param_grad  # accumulating adds into existing .grad tensors
        scratch = op.scratch + (op.param_grad if accumulate > 1 else 0)
        alive = persistent + saved + incoming + op.grad_in + scratch + grads + new
        if alive > peak:
            peak, where = alive, f"backward of {op.name}"
        saved -= op.saved
        grads += new
        incoming = op.grad_in
    return peak, where


def _optimizer_scratch(config: GPTConfig, p: Precision, device: str, trainable: int) -> int:
    """The CPU AdamW (single-tensor) holds two temporaries the size of the parameter it updates
    (sqrt(exp_avg_sq), then its quotient); the fused CUDA kernel none."""
    if device == "cuda" or trainable == 0:
        return 0
    c = config
    largest = max(c.vocab_size * c.n_embd, c.n_embd * c.mlp_size, c.n_embd * 3 * c.n_embd)
    return 2 * min(largest, trainable) * p.param


def cublas_workspaces(device: str, threads: int = 2) -> int:
    """Bytes of the cuBLAS workspaces PyTorch takes from its caching allocator, once per process and per
    thread that runs matmuls (the forward's, and the autograd engine's for the backward), so that they count
    in `max_memory_allocated`: CUBLAS_WORKSPACE_CONFIG's size each (":SIZE:COUNT" in KiB), by default
    32 MiB on compute capability 9 to 12 (assumed when no GPU is here) and 4096 x 2 + 16 x 8 KiB before.
    Measured on an H100 with torch 2.11: 66 MiB more on the first training step of a process."""
    if device != "cuda":
        return 0
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    pairs = re.findall(r":([0-9]+):([0-9]+)", config)
    if pairs:
        return threads * sum(int(size) * int(count) for size, count in pairs) * 1024
    major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9
    return threads * (4096 * 8 if 9 <= major <= 12 else 4096 * 2 + 16 * 8) * 1024


# ----------------------------------------------------------------------------------------------------------
# Inference estimate


INFERENCE_PARTS = ("cuBLAS workspaces", "weights", "KV cache", "logits (prefill)", "prefill workspace")


@dataclass
class InferenceEstimate:
    """Generation memory in bytes: weights, the KV cache for batch x seq_len, prefill logits, workspace."""

    dtype: str
    params: int
    weights: int
    kv_cache: int
    logits: int
    workspace: int
    workspaces: int
    peak: int

    def parts(self) -> dict[str, int]:
        values = (self.workspaces, self.weights, self.kv_cache, self.logits, self.workspace)
        return dict(zip(INFERENCE_PARTS, values))


def inference_memory(
    config: GPTConfig, *, batch_size: int, seq_len: int, dtype: str = "bf16", device: str = "cpu"
) -> InferenceEstimate:
    """Memory to generate for `batch_size` rows up to `seq_len` tokens with weights in `dtype`.

    fp32 / bf16: every weight in that dtype. int8: what `tinylm.quantize` does, weight-only int8 for every
    Linear and the (tied) embedding table with one 16-bit scale per row, the rest and the activations in
    bf16. The KV cache is `GPT.new_cache` (2 x layers x batch x kv_heads x seq_len x head_size); the
    prefill returns logits for every prompt position (batch x seq_len x vocab).
    """
    if dtype not in INFERENCE_DTYPES:
        raise TinylmError(f"dtype {dtype!r}: expected one of {', '.join(INFERENCE_DTYPES)}")
    c, B, T = config, batch_size, seq_len
    params, buffers = model_counts(c)
    a = 4 if dtype == "fp32" else 2
    if dtype == "int8":
        matrices = _matrix_rows_cols(c)
        int8_elems = sum(r * k for r, k in matrices)
        weights = int8_elems + 2 * sum(r for r, _ in matrices) + 2 * (params - int8_elems + buffers)
    else:
        weights = a * (params + buffers)
    N, C = B * T, c.n_embd
    if c.kind == "gru":
        kv = a * c.n_layer * B * C  # the hidden state
        work = a * N * C * 4 + a * N * 3 * C  # input projections of every step and the layer outputs
    else:
        kv = 2 * c.n_layer * B * c.kv_heads * T * c.head_size * a
        D, Dkv, F = c.n_head * c.head_size, c.kv_heads * c.head_size, c.mlp_size
        attn = N * (D + 2 * Dkv) + N * (D + Dkv) * (c.pos == "rope") + 2 * N * D
        eval_config = replace(c, dropout=0.0)  # generation runs in eval mode: no attention dropout
        kernel = attention_kernel(eval_config, Workload(B, T, "32-true" if a == 4 else "bf16-true", device))
        if kernel == "math":
            attn += 2 * B * c.n_head * T * T
        mlp = N * F * (3 if c.mlp == "swiglu" else 2)
        work = a * (2 * N * C + max(attn, mlp))  # the residual stream, a norm's output, the larger branch
    logits = a * N * c.vocab_size + 4 * B * c.vocab_size  # every position; the last one upcast to sample
    blas = cublas_workspaces(device, threads=1)
    peak = blas + weights + kv + max(work, logits)
    return InferenceEstimate(dtype, params, weights, kv, logits, work, blas, peak)


def _matrix_rows_cols(c: GPTConfig) -> list[tuple[int, int]]:
    """(rows, cols) of every matrix `tinylm.quantize` makes int8: the Linear weights and the token table."""
    mats = [(c.vocab_size, c.n_embd)]
    if not c.tie_embeddings:
        mats.append((c.vocab_size, c.n_embd))
    if c.kind == "gru":
        return mats
    D, Dkv, F, C = c.n_head * c.head_size, c.kv_heads * c.head_size, c.mlp_size, c.n_embd
    mlp = [(F, C), (F, C), (C, F)] if c.mlp == "swiglu" else [(F, C), (C, F)]
    return mats + c.n_layer * [(D + 2 * Dkv, C), (C, D), *mlp]


MAX_BATCH = 1 << 20  # the largest batch the estimate considers (a count, never allocated)


def largest_batch(peak_for: Any, budget: int, limit: int = MAX_BATCH) -> int:
    """The largest batch size b <= limit with peak_for(b) <= budget (0 if even 1 does not fit)."""
    if peak_for(1) > budget:
        return 0
    lo, hi = 1, 2
    while hi <= limit and peak_for(hi) <= budget:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # peak_for(lo) fits, peak_for(hi) does not (or hi is past the limit)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak_for(mid) <= budget else (lo, mid)
    return lo


# ----------------------------------------------------------------------------------------------------------
# Sizes and devices

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """ "80GiB", "80 GB", "24G", "512MiB", "1e9" -> bytes. GB/MB/KB are powers of 1000, GiB/G... of 1024."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)(b?)\s*", text.lower())
    if not m:
        raise TinylmError(f"--device-memory {text!r}: expected a size such as 80GiB, 24GB, 512MiB or 16G")
    number, unit, binary, b = m.groups()
    scale = _UNITS[unit] if binary or not b or not unit else 1000 ** "bkmgt".index(unit)
    size = float(number) * scale
    if not 1 <= size <= 1 << 60:  # an exponent past float's range gives inf
        raise TinylmError(
            f"--device-memory {text!r}: expected a size from 1 byte to 1 EiB, found {size:g} bytes"
        )
    return int(size)


def fmt_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, description) of the memory a run may use: a CUDA device's total, else the available RAM."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TinylmError(
                "the cuda device's memory is unknown here: no CUDA device; give --device-memory"
            )
        _free, total = torch.cuda.mem_get_info()
        return total, f"total on {torch.cuda.get_device_name()}"
    import psutil

    return psutil.virtual_memory().available, "available RAM"


@dataclass
class Subject:
    """A model config and the run around it: batch, sequence length, precision, device, trainable count."""

    label: str
    config: GPTConfig
    batch_size: int
    seq_len: int
    device: str
    precision: str | None = None  # a training config's own precision
    packed: bool = False
    accumulate: int = 1
    params: int | None = None
    trainable: int | None = None
    buffers: int | None = None
    rows_per_example: int = 1  # DPO: a pair is two rows, its chosen and its rejected response
    reference: int = 0  # DPO with a frozen reference copy: its parameters and buffers

    def workload(self, precision: str, batch_size: int | None = None) -> Workload:
        b = (self.batch_size if batch_size is None else batch_size) * self.rows_per_example
        return Workload(b, self.seq_len, precision, self.device, self.packed, self.accumulate)

    def training(self, precision: str, batch_size: int | None = None) -> TrainingEstimate:
        return training_memory(
            self.config,
            self.workload(precision, batch_size),
            params=self.params,
            trainable=self.trainable,
            buffers=self.buffers,
            reference=self.reference,
        )
