"""The decoding loop over token ids: prefill once, then one token per step through a static KV cache.

Batches of prompts of different lengths are left-padded: each row keeps its own positions, padding is
masked out of attention, and each row stops on its own (stop id or `max_new_tokens`). Models without a
cache (the GRU baseline) and generations longer than the context window run on the (cropped) sequence at
every step, as nanoGPT does. The engine sees token ids only; text, templates and stop strings belong to
the caller (`tinylm.api`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tinylm.generate.sampling import SamplingParams, choose
from tinylm.model import GPT


@dataclass
class Generated:
    """One row's result: new token ids (a final stop id included), their logprobs, and why it ended."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" when a stop id ended it


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
    if not isinstance(model, GPT) and len({len(p) for p in prompts}) > 1:  # a recurrence cannot skip padding
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
    """Yield, per step, (row, token, logprob) for every row still running."""
    assert prompts and all(len(p) > 0 for p in prompts), "every prompt must hold at least one token"
    device = next(model.parameters()).device
    prompts = [list(p)[-block_size:] for p in prompts]
    width = max(len(p) for p in prompts)
    B = len(prompts)
    ids = torch.full((B, width), 0, dtype=torch.long, device=device)
    history = torch.full((B, width), -1, dtype=torch.long, device=device)  # -1: padding, ignored by penalties
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        history[r, width - len(p) :] = torch.tensor(p)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)  # (B,)
    generated = torch.empty((B, 0), dtype=torch.long, device=device)
    running = torch.ones(B, dtype=torch.bool, device=device)
    stops = torch.tensor(list(stop_ids) or [-2], device=device)

    def step(logits: Tensor) -> list[tuple[int, int, float]]:
        nonlocal history, generated, running
        nxt, logprob = choose(logits.float(), history, generated, params, generator)
        out = [
            (r, int(t), float(lp))
            for r, t, lp, run in zip(range(B), nxt.tolist(), logprob.tolist(), running.tolist())
            if run
        ]
        history = torch.cat([history, nxt[:, None]], dim=1)
        generated = torch.cat([generated, torch.where(running, nxt, -1)[:, None]], dim=1)
        running = running & ~torch.isin(nxt, stops)
        return out

    produced = 0
    if isinstance(model, GPT) and width < block_size:
        n_cached = min(max_new_tokens, block_size - width)
        total = width + n_cached
        cache = model.new_cache(B, total, device=device)
        slots = torch.arange(total, device=device)
        key_mask = slots[None] >= pad[:, None]  # (B, S): real tokens, later slots filled as we go
        positions = torch.arange(width, device=device)[None] - pad[:, None]  # (B, T) each row's own positions
        logits = model(ids, input_pos=slots[:width], cache=cache, positions=positions, key_mask=key_mask)[
            :, -1
        ]
        while produced < n_cached:
            yield step(logits)
            produced += 1
            if not running.any() or produced == n_cached:
                break
            at = width + produced - 1
            logits = model(
                history[:, -1:].clamp(min=0),
                input_pos=slots[at : at + 1],
                cache=cache,
                positions=(at - pad)[:, None],
                key_mask=key_mask,
            )[:, -1]
        if not running.any() or produced == max_new_tokens:
            return
    for _ in range(max_new_tokens - produced):  # no cache, or past the context window
        window = history[:, -block_size:]
        real = window >= 0
        if isinstance(model, GPT):
            logits = model(window.clamp(min=0), positions=real.cumsum(1) - 1, key_mask=real)
        else:
            assert real.all(), "the GRU model decodes padded batches one row at a time"
            logits = model(window)
        yield step(logits[:, -1])
        if not running.any():
            return
