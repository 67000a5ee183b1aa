"""The decoding loop over token ids: prefill once, then one token per step through a static KV cache.

Batches of prompts of different lengths are left-padded: each row keeps its own positions, padding is
masked out of attention, and each row stops on its own (stop id or `max_new_tokens`). Models without a
cache (the GRU baseline) and generations longer than the context window run on the (cropped) sequence at
every step, as nanoGPT does. Models run through transformers (`HFCausalLM`) decode through transformers'
own cache the same way. The engine sees token ids only; text, templates and stop strings belong to
the caller (`tinylm.api`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tinylm.generate import graphs
from tinylm.generate.sampling import PAD, SamplingParams, choose
from tinylm.hf_model import HFCausalLM
from tinylm.model import GPT

CACHED = (GPT, HFCausalLM)  # models with a KV cache (`new_cache`)
SYNC_EVERY = {"cuda": 8}  # decode steps queued on a device per host sync (token read-back); else 1


@dataclass
class Generated:
    """One row's result: new token ids (a final stop id included), their logprobs, and why it ended."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" when a stop id ended it


def _pads(model: nn.Module) -> bool:
    """Whether the model runs left-padded batches: tinylm's GPT, and transformers models that take
    position ids (so each row's tokens keep their own positions)."""
    return isinstance(model, GPT) or (isinstance(model, HFCausalLM) and model.takes_positions)


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    block_size: int,
    params: SamplingParams | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[Generated]:
    """Generate for every prompt at once; results in prompt order."""
    if not _pads(model) and len({len(p) for p in prompts}) > 1:  # e.g. a recurrence cannot skip padding
        return [
            generate_batch(
                model,
                [p],
                max_new_tokens=max_new_tokens,
                block_size=block_size,
                params=params,
                stop_ids=stop_ids,
                generator=generator,
            )[0]
            for p in prompts
        ]
    rows = [Generated() for _ in prompts]
    for step in _decode(
        model, prompts, max_new_tokens, block_size, params or SamplingParams(), stop_ids, generator
    ):
        for r, token, logprob in step:
            rows[r].tokens.append(token)
            rows[r].logprobs.append(logprob)
            if token in stop_ids:
                rows[r].finish_reason = "stop"
    return rows


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    block_size: int,
    params: SamplingParams | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Iterator[int]:
    """Stream the new token ids for one prompt, stopping after any of `stop_ids`.

    `temperature`/`top_k`/`top_p` are shorthands for the matching `SamplingParams` fields.
    """
    if params is None:
        params = SamplingParams(temperature=temperature or 0.0, top_k=top_k, top_p=top_p)
    for step in _decode(model, [prompt], max_new_tokens, block_size, params, stop_ids, generator):
        for _, token, _ in step:
            yield token


def _decode(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    block_size: int,
    params: SamplingParams,
    stop_ids: Sequence[int],
    generator: torch.Generator | None,
) -> Iterator[list[tuple[int, int, float]]]:
    """Yield, per step, (row, token, logprob) for every row still running.

    The token history is one preallocated (B, prompt + max_new) tensor, -1 where nothing is (yet), so a
    step's work does not grow with the length; `generated` holds the new tokens, -1 once a row stopped.
    Steps run `SYNC_EVERY` at a time on the device before their tokens are read back (one host sync per
    chunk): 1 on the CPU, where reading is free, 8 on a GPU. On a GPU the decode step is a CUDA graph
    (`tinylm.generate.graphs`).
    """
    assert prompts and all(len(p) > 0 for p in prompts), "every prompt must hold at least one token"
    if max_new_tokens <= 0:
        return
    device = next(model.parameters()).device
    prompts = [list(p)[-block_size:] for p in prompts]
    width = max(len(p) for p in prompts)
    B = len(prompts)
    history = torch.full((B, width + max_new_tokens), PAD, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        history[r, width - len(p) : width] = torch.tensor(p)
    generated = torch.full((B, max_new_tokens), PAD, dtype=torch.long, device=device)  # finished rows: PAD
    pad = torch.tensor([width - len(p) for p in prompts], device=device)  # (B,)
    running = torch.ones(B, dtype=torch.bool, device=device)
    stops = torch.tensor(list(stop_ids) or [-2], device=device)
    sync_every = SYNC_EVERY.get(device.type, 1)
    greedy = params == SamplingParams()  # plain argmax, no penalties: whole chunks run on the device
    chunk: list[tuple[Tensor, Tensor]] = []  # per pending step: (running before it, logprobs)

    def step(logits: Tensor, t: int) -> None:
        """Choose token t (0-based among the new ones) for every row; record it on the device."""
        nonlocal running
        nxt, logprob = choose(logits.float(), history, generated, params, generator)
        history[:, width + t] = nxt
        generated[:, t] = torch.where(running, nxt, PAD)
        chunk.append((running, logprob))
        running = running & ~torch.isin(nxt, stops)

    def record(ids: Tensor, logprobs: Tensor, t: int) -> None:
        """Record k tokens (B, k) chosen on the device from token t on, as k calls of `step` would."""
        nonlocal running
        k = ids.size(1)
        logprobs = logprobs.clone()  # the graph's output buffer: the next replay overwrites it
        history[:, width + t : width + t + k] = ids
        hit = torch.isin(ids, stops)  # (B, k)
        ran = running[:, None] & (hit.cumsum(dim=1) - hit.long() == 0)  # (B, k) running before each step
        generated[:, t : t + k] = torch.where(ran, ids, PAD)
        chunk.extend((ran[:, i], logprobs[:, i]) for i in range(k))
        running = running & ~hit.any(dim=1)

    def flush(t: int) -> Iterator[list[tuple[int, int, float]]]:
        """Read back the pending steps, which end with token t - 1, and yield them in order."""
        first = t - len(chunk)
        tokens = generated[:, first:t].T.tolist()  # (steps, B)
        ran = torch.stack([r for r, _ in chunk]).tolist()
        logprobs = torch.stack([lp for _, lp in chunk]).float().tolist()
        chunk.clear()
        for tok, run, lp in zip(tokens, ran, logprobs):
            yield [(r, tok[r], lp[r]) for r in range(B) if run[r]]

    produced = 0
    if isinstance(model, CACHED) and width < block_size:
        n_cached = min(max_new_tokens, block_size - width)
        total = width + n_cached
        fast = graphs.enabled(model) and n_cached > 1
        if fast:
            decoder = graphs.decode_step(model, B, graphs.bucket(total, block_size))
            cache, slots = decoder.cache, torch.arange(decoder.cache.max_len, device=device)
        else:
            cache, slots = model.new_cache(B, total, device=device), torch.arange(total, device=device)
        key_mask = slots[None] >= pad[:, None]  # (B, S): real tokens, later slots filled as we go
        if fast:
            decoder.key_mask.copy_(key_mask)
        positions = torch.arange(width, device=device)[None] - pad[:, None]  # (B, T) each row's own positions
        prompt_ids = history[:, :width].clamp(min=0)
        logits = model(
            prompt_ids, input_pos=slots[:width], cache=cache, positions=positions, key_mask=key_mask
        )[:, -1]
        step(logits, 0)
        produced = 1
        while True:
            if len(chunk) == sync_every or produced == n_cached:
                yield from flush(produced)
                if not running.any():
                    return
            if produced == n_cached:
                break
            at = width + produced - 1  # the slot (and padded position) of the token just chosen
            if fast:
                decoder.token.copy_(history[:, at : at + 1].clamp(min=0))
                decoder.slot.fill_(at)
                decoder.positions.copy_((at - pad)[:, None])
            if fast and greedy:  # the rest of this chunk's steps in one graph replay
                k = min(sync_every - len(chunk), n_cached - produced)
                record(*decoder.greedy_chunk(k), produced)
                produced += k
                continue
            if fast:
                logits = decoder.replay()
            else:
                logits = model(
                    history[:, at : at + 1].clamp(min=0),
                    input_pos=slots[at : at + 1],
                    cache=cache,
                    positions=(at - pad)[:, None],
                    key_mask=key_mask,
                )[:, -1]
            step(logits, produced)
            produced += 1
        if produced == max_new_tokens:
            return
    for t in range(produced, max_new_tokens):  # no cache, or past the context window
        window = history[:, : width + t][:, -block_size:]
        real = window >= 0
        if isinstance(model, CACHED):
            logits = model(window.clamp(min=0), positions=real.cumsum(1) - 1, key_mask=real)
        else:
            assert real.all(), "the GRU model decodes padded batches one row at a time"
            logits = model(window)
        step(logits[:, -1], t)
        yield from flush(t + 1)
        if not running.any():
            return
