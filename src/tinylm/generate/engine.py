"""The decoding loop over token ids: prefill once, then one token at a time through a static KV cache.

The engine sees token ids only; text, templates and stop strings belong to the caller (`tinylm.api`).
Models without a cache (the GRU baseline) are run on the whole sequence at every step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from tinylm.generate.sampling import choose_next
from tinylm.model import GPT


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    block_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids after `prompt`, stopping after any of `stop_ids`.

    A prompt longer than the context leaves room for the reply by dropping its oldest tokens.
    """
    assert len(prompt) > 0, "the prompt must hold at least one token"
    device = next(model.parameters()).device
    max_new_tokens = min(max_new_tokens, block_size - 1)
    prompt = list(prompt)[-(block_size - max_new_tokens) :]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    stops = set(stop_ids)
    if not isinstance(model, GPT):
        yield from _generate_uncached(model, ids, max_new_tokens, stops, sample)
        return
    cache = model.new_cache(1, len(prompt) + max_new_tokens, device=device)
    pos = torch.arange(len(prompt), device=device)
    logits = model(ids, input_pos=pos, cache=cache)[:, -1]
    for i in range(max_new_tokens):
        nxt = choose_next(logits, **sample)  # (1,)
        token = int(nxt.item())
        yield token
        if token in stops or i == max_new_tokens - 1:
            return
        pos = pos[-1:] + 1
        logits = model(nxt[:, None], input_pos=pos, cache=cache)[:, -1]


def _generate_uncached(
    model: nn.Module, ids: torch.Tensor, max_new_tokens: int, stops: set[int], sample: dict
):
    for _ in range(max_new_tokens):
        nxt = choose_next(model(ids)[:, -1], **sample)
        token = int(nxt.item())
        yield token
        if token in stops:
            return
        ids = torch.cat([ids, nxt[:, None]], dim=1)
