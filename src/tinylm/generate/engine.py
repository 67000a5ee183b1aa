"""The decoding loop over token ids: prefill once, then one token per step through a static KV cache.

Batches of prompts of different lengths are left-padded: each row keeps its own positions, padding is
masked out of attention, and each row stops on its own (stop id or `max_new_tokens`). Models without a
cache (the GRU baseline, no `CausalLM`) and generations longer than the context window run on the
(cropped) sequence at every step, as nanoGPT does. A model run through transformers decodes through
transformers' own cache the same way, and batches prompts of different lengths if it takes positions
(`CausalLM.takes_positions`). The engine sees token ids only; text, templates and stop strings belong to
the caller (`tinylm.api`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tinylm.generate import graphs
from tinylm.generate.grammar import Grammar, Matcher, constrain
from tinylm.generate.prefix import PrefixCache
from tinylm.generate.sampling import PAD, SamplingParams, choose
from tinylm.model import CausalLM

SYNC_EVERY = {"cuda": 8}  # decode steps queued on a device per host sync (token read-back); else 1

Step = list[tuple[int, int, float]]  # one decode step: (row, token, logprob) of every row still running


@dataclass
class Generated:
    """One row's result: new token ids (a final stop id included), their logprobs, and why it ended."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" when a stop id ended it


def _pads(model: nn.Module) -> bool:
    """Whether the model runs left-padded batches: a `CausalLM` that takes explicit positions (tinylm's GPT,
    transformers models with position ids), so each row's tokens keep their own positions."""
    return isinstance(model, CausalLM) and model.takes_positions


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
    grammar: Grammar | None = None,
    until: Callable[[list[Generated]], bool] | None = None,
) -> list[Generated]:
    """Generate for every prompt at once; results in prompt order. With a `grammar`, each row follows it
    (`tinylm.generate.grammar`). `until(rows)`, asked after every step, ends the whole batch early when it
    returns True (a caller's stop strings: the engine knows no text)."""
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
                grammar=grammar,
                until=until,
            )[0]
            for p in prompts
        ]
    rows = [Generated() for _ in prompts]
    for step in _decode(
        model, prompts, max_new_tokens, block_size, params or SamplingParams(), stop_ids, generator, grammar
    ):
        for r, token, logprob in step:
            rows[r].tokens.append(token)
            rows[r].logprobs.append(logprob)
            if token in stop_ids:
                rows[r].finish_reason = "stop"
        if until is not None and until(rows):
            break
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
    grammar: Grammar | None = None,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[int]:
    """Stream the new token ids for one prompt, stopping after any of `stop_ids`; with a `grammar`, the ids
    follow it.

    `temperature`/`top_k`/`top_p` are shorthands for the matching `SamplingParams` fields. A `prefix_cache`
    (`tinylm.generate.prefix`) gives the keys and values of the prompt's longest known prefix, and keeps
    those of the prompt and reply for later prompts.
    """
    if params is None:
        params = SamplingParams(temperature=temperature or 0.0, top_k=top_k, top_p=top_p)
    for step in _decode(
        model, [prompt], max_new_tokens, block_size, params, stop_ids, generator, grammar, prefix_cache
    ):
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
    grammar: Grammar | None = None,
    prefix_cache: PrefixCache | None = None,
) -> Iterator[Step]:
    """Yield, per step, (row, token, logprob) for every row still running.

    A `CausalLM` reads the prompts once and then one token per step through its KV cache while the
    sequence fits in the context (`_decode_cached`); past the context window, and for a model without a
    cache, each step runs on the (cropped) sequence (`_decode_windows`).
    """
    assert prompts and all(len(p) > 0 for p in prompts), "every prompt must hold at least one token"
    assert prefix_cache is None or len(prompts) == 1, "a prefix cache serves one prompt at a time"
    if max_new_tokens <= 0:
        return
    device = next(model.parameters()).device
    prompts = [list(p)[-block_size:] for p in prompts]
    matchers = [grammar.matcher() for _ in prompts] if grammar is not None else []
    rows = _Rows(prompts, max_new_tokens, params, stop_ids, generator, device, matchers)
    cached = isinstance(model, CausalLM)
    produced = 0
    if cached and rows.width < block_size:
        produced = min(max_new_tokens, block_size - rows.width)
        stopped = yield from _decode_cached(model, rows, produced, block_size, prefix_cache)
        if stopped or produced == max_new_tokens:
            return
    yield from _decode_windows(model, rows, produced, max_new_tokens, block_size, cached=cached)


class _Rows:
    """The batch on the device while it decodes: the token ids, which rows still run, and the steps not
    read back yet.

    The token history is one preallocated (B, prompt + max_new) tensor, -1 where nothing is (yet), so a
    step's work does not grow with the length; `generated` holds the new tokens, -1 once a row stopped.
    Steps run `SYNC_EVERY` at a time on the device before their tokens are read back (one host sync per
    chunk, `flush`): 1 on the CPU, where reading is free, 8 on a GPU, and 1 under a grammar, whose
    matchers read every token as it is chosen.
    """

    def __init__(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        params: SamplingParams,
        stop_ids: Sequence[int],
        generator: torch.Generator | None,
        device: torch.device,
        matchers: list[Matcher] | None = None,
    ):
        B, width = len(prompts), max(len(p) for p in prompts)
        self.B, self.width, self.device = B, width, device
        self.history = torch.full((B, width + max_new_tokens), PAD, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            self.history[r, width - len(p) : width] = torch.tensor(p)
        self.generated = torch.full((B, max_new_tokens), PAD, dtype=torch.long, device=device)
        self.pad = torch.tensor([width - len(p) for p in prompts], device=device)  # (B,)
        self.running = torch.ones(B, dtype=torch.bool, device=device)
        self.stops = torch.tensor(list(stop_ids) or [-2], device=device)
        self.params, self.generator = params, generator
        self.matchers = matchers or []  # one per row under a grammar
        self.sync_every = 1 if self.matchers else SYNC_EVERY.get(device.type, 1)
        # plain argmax, no penalties, no grammar: whole chunks run on the device
        self.greedy = params == SamplingParams() and not self.matchers
        self.chunk: list[tuple[Tensor, Tensor]] = []  # per pending step: (running before it, logprobs)

    def step(self, logits: Tensor, t: int) -> None:
        """Choose token t (0-based among the new ones) for every row; record it on the device."""
        logits = logits.float()
        if self.matchers:
            running = self.running.tolist()
            logits = constrain(logits, [m if run else None for m, run in zip(self.matchers, running)])
        nxt, logprob = choose(logits, self.history, self.generated, self.params, self.generator)
        if self.matchers:
            for m, run, token in zip(self.matchers, running, nxt.tolist()):
                if run:
                    m.advance(token)
        self.history[:, self.width + t] = nxt
        self.generated[:, t] = torch.where(self.running, nxt, PAD)
        self.chunk.append((self.running, logprob))
        self.running = self.running & ~torch.isin(nxt, self.stops)

    def record(self, ids: Tensor, logprobs: Tensor, t: int) -> None:
        """Record k tokens (B, k) chosen on the device from token t on, as k calls of `step` would."""
        k = ids.size(1)
        logprobs = logprobs.clone()  # the graph's output buffer: the next replay overwrites it
        self.history[:, self.width + t : self.width + t + k] = ids
        hit = torch.isin(ids, self.stops)  # (B, k)
        ran = self.running[:, None] & (hit.cumsum(dim=1) - hit.long() == 0)  # (B, k) running before each step
        self.generated[:, t : t + k] = torch.where(ran, ids, PAD)
        self.chunk.extend((ran[:, i], logprobs[:, i]) for i in range(k))
        self.running = self.running & ~hit.any(dim=1)

    def flush(self, t: int) -> Iterator[Step]:
        """Read back the pending steps, which end with token t - 1, and yield them in order."""
        first = t - len(self.chunk)
        tokens = self.generated[:, first:t].T.tolist()  # (steps, B)
        ran = torch.stack([r for r, _ in self.chunk]).tolist()
        logprobs = torch.stack([lp for _, lp in self.chunk]).float().tolist()
        self.chunk.clear()
        for tok, run, lp in zip(tokens, ran, logprobs):
            yield [(r, tok[r], lp[r]) for r in range(self.B) if run[r]]


def _decode_cached(
    model: CausalLM, rows: _Rows, n_cached: int, block_size: int, prefix: PrefixCache | None = None
) -> Generator[Step, None, bool]:
    """Read the prompts into the model's KV cache, then choose the first `n_cached` new tokens, one step
    each; on a GPU the step is a CUDA graph (`tinylm.generate.graphs`), and plain greedy decoding runs
    the rest of a chunk in one replay. Returns whether every row stopped.

    With a `prefix` cache (one prompt, a static cache) the prompt's longest known prefix is copied into the
    cache instead of run, and the prompt and the tokens fed after it are kept for later prompts, also when
    the caller stops reading early."""
    decoder, cache, slots, key_mask = _new_cache(model, rows, n_cached, block_size)
    history, width, pad = rows.history, rows.width, rows.pad
    prefix = prefix if model.static_cache else None
    known = prefix.read_into(history[0, :width].tolist(), cache, row=0, start=0) if prefix else 0
    positions = (
        torch.arange(known, width, device=rows.device)[None] - pad[:, None]
    )  # (B, T) each row's own positions
    prompt_ids = history[:, known:width].clamp(min=0)
    logits = model(
        prompt_ids, input_pos=slots[known:width], cache=cache, positions=positions, key_mask=key_mask
    )
    rows.step(logits[:, -1], 0)
    produced = 1
    try:
        while True:
            if len(rows.chunk) == rows.sync_every or produced == n_cached:
                yield from rows.flush(produced)
                if produced == n_cached or not rows.running.any():
                    break
            at = width + produced - 1  # the slot (and padded position) of the token just chosen
            if decoder is None:
                logits = model(
                    history[:, at : at + 1].clamp(min=0),
                    input_pos=slots[at : at + 1],
                    cache=cache,
                    positions=(at - pad)[:, None],
                    key_mask=key_mask,
                )[:, -1]
            else:
                decoder.token.copy_(history[:, at : at + 1].clamp(min=0))
                decoder.slot.fill_(at)
                decoder.positions.copy_((at - pad)[:, None])
                if rows.greedy:  # the rest of this chunk's steps in one graph replay
                    k = min(rows.sync_every - len(rows.chunk), n_cached - produced)
                    rows.record(*decoder.greedy_chunk(k), produced)
                    produced += k
                    continue
                logits = decoder.replay()
            rows.step(logits, produced)
            produced += 1
    except GeneratorExit:  # the caller stopped reading (a stop of its own): what was fed is still good
        _keep_prefix(prefix, rows, cache, produced)
        raise
    _keep_prefix(prefix, rows, cache, produced)
    return not bool(rows.running.any())


def _keep_prefix(prefix: PrefixCache | None, rows: _Rows, cache: Any, produced: int) -> None:
    """Keep the keys and values of the prompt and the new tokens fed so far (all but the newest of the
    `produced` chosen ones: it was never fed) in the prefix cache."""
    if prefix is not None:
        prefix.keep(rows.history[0, : rows.width + produced - 1].tolist(), cache, row=0, start=0)


def _new_cache(
    model: CausalLM, rows: _Rows, n_cached: int, block_size: int
) -> tuple[graphs.DecodeStep | None, Any, Tensor, Tensor]:
    """The cache to decode into: a fresh one, or that of the compiled decode step when the fast path
    applies (then also that step); its slots (S,); the key mask (B, S) of the real tokens."""
    total = rows.width + n_cached
    decoder = None
    if graphs.enabled(model) and n_cached > 1:
        decoder = graphs.decode_step(model, rows.B, graphs.bucket(total, block_size))
        cache, slots = decoder.cache, torch.arange(decoder.cache.max_len, device=rows.device)
    else:
        cache, slots = (
            model.new_cache(rows.B, total, device=rows.device),
            torch.arange(total, device=rows.device),
        )
    key_mask = slots[None] >= rows.pad[:, None]  # (B, S): real tokens, later slots filled as we go
    if decoder is not None:
        decoder.key_mask.copy_(key_mask)
    return decoder, cache, slots, key_mask


def _decode_windows(
    model: nn.Module, rows: _Rows, first: int, max_new_tokens: int, block_size: int, *, cached: bool
) -> Iterator[Step]:
    """New tokens first..max_new_tokens-1, each from a pass over the last `block_size` tokens: a model
    without a cache, or a generation past the context window. A `CausalLM` (`cached`) gets each row's
    positions and padding mask; the GRU baseline runs unpadded rows only."""
    for t in range(first, max_new_tokens):
        window = rows.history[:, : rows.width + t][:, -block_size:]
        real = window >= 0
        if cached:
            logits = model(window.clamp(min=0), positions=real.cumsum(1) - 1, key_mask=real)
        else:
            assert real.all(), "the GRU model decodes padded batches one row at a time"
            logits = model(window)
        rows.step(logits[:, -1], t)
        yield from rows.flush(t + 1)
        if not rows.running.any():
            return
