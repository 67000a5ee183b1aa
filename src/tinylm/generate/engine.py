"""The decoding loop over token ids: prefill once, then one token at a time through a static KV cache.

The engine sees token ids only; text, templates and stop strings belong to the caller (`tinylm.api`).
Models without a cache (the GRU baseline), and generations longer than the context window, are run on
the (cropped) sequence at every step.
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

    The KV cache covers the context window; a longer generation then slides the window like nanoGPT,
    recomputing the last `block_size` tokens per step. A prompt longer than the window keeps its end.
    """
    assert len(prompt) > 0, "the prompt must hold at least one token"
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)[-block_size:]], dtype=torch.long, device=device)  # (1, T)
    sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    stops = set(stop_ids)
    produced: list[int] = []
    if isinstance(model, GPT) and ids.size(1) < block_size:
        n_cached = min(max_new_tokens, block_size - ids.size(1))
        cache = model.new_cache(1, ids.size(1) + n_cached, device=device)
        pos = torch.arange(ids.size(1), device=device)
        logits = model(ids, input_pos=pos, cache=cache)[:, -1]
        while len(produced) < n_cached:
            nxt = choose_next(logits, **sample)  # (1,)
            token = int(nxt.item())
            yield token
            produced.append(token)
            if token in stops:
                return
            if len(produced) < n_cached:
                pos = pos[-1:] + 1
                logits = model(nxt[:, None], input_pos=pos, cache=cache)[:, -1]
        if len(produced) == max_new_tokens:
            return
        ids = torch.cat([ids, torch.tensor([produced], dtype=torch.long, device=device)], dim=1)
    yield from _generate_uncached(model, ids, max_new_tokens - len(produced), block_size, stops, sample)


def _generate_uncached(
    model: nn.Module, ids: torch.Tensor, steps: int, block_size: int, stops: set[int], sample
):
    for _ in range(steps):
        nxt = choose_next(model(ids[:, -block_size:])[:, -1], **sample)
        token = int(nxt.item())
        yield token
        if token in stops:
            return
        ids = torch.cat([ids, nxt[:, None]], dim=1)
