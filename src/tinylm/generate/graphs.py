"""The GPU fast path: one decode step of a GPT compiled by inductor and replayed as a CUDA graph.

A decode step is ~10 small kernels per layer; launched one by one from Python they leave the GPU idle
most of the time (SmolLM2-135M: 30 layers, ~1 ms of launches for ~0.1 ms of work at batch 1). Here the
step, `model(token, input_pos=slot, cache=..., positions=..., key_mask=...)`, is compiled once for a
(batch, cache length, dtype) shape, so inductor fuses the norms, RoPE and the mask into few kernels, then
captured into a CUDA graph that one call replays. Inputs live in static buffers that the caller fills in
place (no host sync); the cache belongs to the step and is reused across requests (a new prompt simply
overwrites its slots, see `KVCache`). Cache lengths are rounded up to a multiple of `BUCKET` so that
requests of similar lengths share one graph.

Plain greedy decoding (no penalties) goes further: `greedy_chunk(k)` is a second graph of k whole steps,
each choosing its token by argmax and feeding it to the next, so k tokens cost one replay and no Python
work per token at all.

On the CPU there are no graphs, but the compiled step still fuses the small eager operations around the
products (which run tinylm's own kernels, `tinylm.cpu_kernels`, as custom ops); compiling takes seconds
to a minute on 2 cores for a gain of about 10% (SmolLM2-135M int8), so there it is opt-in:
TINYLM_COMPILE_DECODE=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tinylm.model import GPT, KVCache

BUCKET = 256  # cache lengths are rounded up to a multiple of this
MAX_GRAPHS = 8  # per model; the least recently built is dropped past this


def enabled(model: torch.nn.Module) -> bool:
    """Use the fast path for a GPT on a CUDA device (unless TINYLM_CUDA_GRAPHS=0), or on the CPU when
    TINYLM_COMPILE_DECODE=1 asks for it."""
    if not isinstance(model, GPT):
        return False
    if next(model.parameters()).device.type == "cuda":
        return os.environ.get("TINYLM_CUDA_GRAPHS", "1") != "0"
    return os.environ.get("TINYLM_COMPILE_DECODE", "0") == "1"


def bucket(length: int, block_size: int) -> int:
    """The cache length a request of `length` positions runs with: rounded up, capped at block_size."""
    return min(block_size, -(-length // BUCKET) * BUCKET)


@dataclass
class DecodeStep:
    """Static buffers, a cache and the compiled step (on CUDA also its graph) for one (batch, cache length).

    Fill `token` (B, 1), `slot` (1,), `positions` (B, 1) and `key_mask` (B, S) with `copy_`, call
    `replay()`, read the logits (B, V) it returns. `cache` is the KV cache the step reads and writes:
    prefill into it with the eager model first.
    """

    cache: KVCache
    token: Tensor
    slot: Tensor
    positions: Tensor
    key_mask: Tensor
    compiled: Callable[..., Tensor]
    graph: torch.cuda.CUDAGraph | None = None  # None on the CPU: the compiled step runs directly
    logits: Tensor | None = None  # the graph's output buffer
    chunks: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = field(default_factory=dict)

    def replay(self) -> Tensor:
        if self.graph is None:
            return self.compiled(self.token, self.slot, self.positions, self.key_mask)
        self.graph.replay()
        return self.logits

    def greedy_chunk(self, k: int) -> tuple[Tensor, Tensor]:
        """Run k greedy steps from the current buffers: ids (B, k) and their logprobs (B, k).

        Step i writes its keys/values at slot + i and feeds its argmax to step i + 1; the buffers are left
        advanced by k. On CUDA the k steps are one graph, captured on first use.
        """
        if self.graph is None:
            return self._steps(k)
        if k not in self.chunks:
            self.chunks[k] = self._capture_chunk(k)
        graph, ids, logprobs = self.chunks[k]
        graph.replay()
        return ids, logprobs

    def _steps(self, k: int) -> tuple[Tensor, Tensor]:
        B = self.token.size(0)
        ids = torch.zeros(B, k, dtype=torch.long, device=self.token.device)
        logprobs = torch.zeros(B, k, dtype=torch.float32, device=self.token.device)
        for i in range(k):
            logits = self.compiled(self.token, self.slot, self.positions, self.key_mask).float()
            nxt = logits.argmax(dim=-1)  # (B,)
            ids[:, i] = nxt
            logprobs[:, i] = logits.log_softmax(dim=-1).gather(-1, nxt[:, None]).squeeze(-1)
            self.token.copy_(nxt[:, None])
            self.slot.add_(1)
            self.positions.add_(1)
        return ids, logprobs

    @torch.inference_mode(False)
    @torch.no_grad()
    def _capture_chunk(self, k: int) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        saved = [t.clone() for t in (self.token, self.slot, self.positions)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ids, logprobs = self._steps(k)
        for t, value in zip((self.token, self.slot, self.positions), saved):
            t.copy_(value)  # capturing ran nothing, but keep the buffers as they were all the same
        return graph, ids, logprobs


def decode_step(model: GPT, batch_size: int, max_len: int) -> DecodeStep:
    """The step for this shape: built (compiled, and on CUDA captured: seconds to a minute) on first use,
    then cached on the model."""
    dtype = model.wte.weight.dtype
    steps: dict = model.__dict__.setdefault("_decode_steps", {})
    key = (batch_size, max_len, dtype, model.training)
    if key not in steps:
        if len(steps) >= MAX_GRAPHS:
            steps.pop(next(iter(steps)))
        steps[key] = _build(model, batch_size, max_len)
    steps[key] = steps.pop(key)  # most recently used last
    return steps[key]


@torch.inference_mode(False)
@torch.no_grad()
def _build(model: GPT, B: int, S: int) -> DecodeStep:
    """Normal tensors (not inference tensors), so that calls with and without inference_mode can share."""
    device = model.wte.weight.device
    cache = model.new_cache(B, S)
    token = torch.zeros(B, 1, dtype=torch.long, device=device)
    slot = torch.zeros(1, dtype=torch.long, device=device)
    positions = torch.zeros(B, 1, dtype=torch.long, device=device)
    key_mask = torch.ones(B, S, dtype=torch.bool, device=device)

    def step(token: Tensor, slot: Tensor, positions: Tensor, key_mask: Tensor) -> Tensor:
        logits = model(token, input_pos=slot, cache=cache, positions=positions, key_mask=key_mask)
        return logits[:, -1]

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    args = (token, slot, positions, key_mask)
    if device.type != "cuda":
        compiled(*args)  # compile now (the warm-up writes slot 0, which the prefill overwrites)
        return DecodeStep(cache, token, slot, positions, key_mask, compiled)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        for _ in range(3):
            compiled(*args)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = compiled(*args)
    return DecodeStep(cache, token, slot, positions, key_mask, compiled, graph, logits)
