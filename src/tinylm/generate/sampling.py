"""Logits processors and the next-token choice: penalties, n-gram blocking, temperature, top-k/top-p/min-p.

Each processor takes logits (B, V) and returns logits (B, V), with filtered or banned entries set to -inf,
and matches the transformers processor of the same name (`RepetitionPenaltyLogitsProcessor`,
`NoRepeatNGramLogitsProcessor`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper`) with
`min_tokens_to_keep=1`; frequency/presence penalties follow OpenAI's formula. `process_logits` chains them in
transformers' order and `choose` picks the next ids with their log-probabilities. `SamplingParams` is the
sampler's view of the generation options (`tinylm.generate.options`): their fields, defaults and rules.

Token histories are (B, T) long tensors in which -1 marks padding: a row is read as its tokens with the -1
entries dropped, so left-padded prompts and rows that finished early need no special care. This module
knows nothing about models, caches or text.
"""

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tinylm.generate.options import OPTIONS, GenerationOptions

PAD = -1  # marks a padding slot in a history


def _default(name: str):
    return OPTIONS[name].default


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into the next token: the generation options the sampler reads, with their
    defaults (plain greedy decoding) and rules, both from `tinylm.generate.options`."""

    temperature: float = _default("temperature")
    top_k: int | None = _default("top_k")
    top_p: float | None = _default("top_p")
    min_p: float | None = _default("min_p")
    repetition_penalty: float = _default("repetition_penalty")
    frequency_penalty: float = _default("frequency_penalty")
    presence_penalty: float = _default("presence_penalty")
    no_repeat_ngram_size: int = _default("no_repeat_ngram_size")

    def validate(self) -> list[str]:
        """Every problem with these values, each naming the field and its value (empty when all is well)."""
        return [p for name in SAMPLED if (p := OPTIONS[name].problem(getattr(self, name))) is not None]


SAMPLED = tuple(f.name for f in fields(SamplingParams))
"""The generation options the sampler reads: the fields of `SamplingParams`."""


def sampling_params(options: GenerationOptions) -> SamplingParams:
    """The sampler's view of `options`."""
    return SamplingParams(**{name: getattr(options, name) for name in SAMPLED})


def _token_counts(ids: Tensor, vocab_size: int) -> Tensor:
    """How often each token occurs in each row of ids (B, T), padding and ids >= V ignored -> (B, V)."""
    dump = vocab_size  # padding and out-of-range ids land in an extra column that is dropped
    ids = torch.where((ids < 0) | (ids >= vocab_size), dump, ids)
    counts = torch.zeros(ids.size(0), vocab_size + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids))
    return counts[:, :vocab_size]


def repetition_penalty(logits: Tensor, history: Tensor, penalty: float) -> Tensor:
    """Divide the positive logits of tokens seen in history (B, T) by penalty, multiply the negative ones."""
    seen = _token_counts(history, logits.size(-1)) > 0  # (B, V)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(
    logits: Tensor, generated: Tensor, frequency: float, presence: float
) -> Tensor:
    """OpenAI's penalties: logit -= frequency * count + presence * (count > 0), counted in generated (B, G)."""
    counts = _token_counts(generated, logits.size(-1)).to(logits.dtype)  # (B, V)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def _left_pad(history: Tensor) -> Tensor:
    """Left-pad each row: its tokens moved to the right end in their order, padding before them: (B, T)."""
    B, T = history.shape
    valid = history >= 0
    lengths = valid.sum(dim=1, keepdim=True)  # (B, 1)
    slot = torch.where(valid, T - lengths + valid.cumsum(dim=1) - 1, T)  # padding goes to a dropped column
    aligned = torch.full((B, T + 1), PAD, dtype=history.dtype, device=history.device)
    return aligned.scatter(1, slot, torch.where(valid, history, PAD))[:, :T]


def no_repeat_ngram(logits: Tensor, history: Tensor, n: int) -> Tensor:
    """Ban (-inf) every token that would complete an n-gram already present in history (B, T)."""
    assert n >= 1, f"no_repeat_ngram needs n >= 1, got {n}"
    B, T = history.shape
    V = logits.size(-1)
    if n > T:  # no complete n-gram yet
        return logits
    tokens = _left_pad(history)  # (B, T), so the last n-1 slots hold each row's latest tokens
    windows = tokens.unfold(1, n, 1)  # (B, T-n+1, n): every n-gram
    prefix = tokens[:, T - n + 1 :]  # (B, n-1): what the next token would extend
    match = (windows[..., :-1] == prefix[:, None]).all(dim=-1) & (windows >= 0).all(dim=-1)
    banned = torch.where(match, windows[..., -1].clamp(max=V), V)  # (B, T-n+1), V: nothing banned
    mask = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device).scatter_(1, banned, True)
    return logits.masked_fill(mask[:, :V], float("-inf"))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (all logits tied with the k-th stay too)."""
    assert k >= 1, f"top_k must be >= 1, got {k}"
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of tokens whose probabilities sum to at least p (the top token always stays).

    As transformers: sort ascending and drop the tokens whose cumulative probability is <= 1 - p.
    """
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - p  # (B, V) in sorted order
    remove[..., -1] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop the tokens less likely than min_p times the most likely one (the top token always stays)."""
    probs = logits.softmax(dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: Tensor, history: Tensor, generated: Tensor, params: SamplingParams) -> Tensor:
    """The whole pipeline on logits (B, V), in transformers' order.

    history (B, T) holds prompt + generated tokens, generated (B, G) the generated ones only, -1 padding.
    Penalties and n-gram bans always apply; temperature and the filters only when sampling (temperature > 0).
    """
    if params.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, history, params.repetition_penalty)
    if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        logits = frequency_presence_penalty(
            logits, generated, params.frequency_penalty, params.presence_penalty
        )
    if params.no_repeat_ngram_size > 0:
        logits = no_repeat_ngram(logits, history, params.no_repeat_ngram_size)
    if params.temperature <= 0.0:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p is not None and params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    if params.min_p is not None:
        logits = min_p_filter(logits, params.min_p)
    return logits


def choose(
    logits: Tensor,
    history: Tensor,
    generated: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Next ids (B,) and their log-probabilities (B,) under the processed distribution.

    Greedy (temperature 0) takes the argmax of the penalised logits; sampling draws from the
    temperature-scaled, filtered distribution. A row whose every token was banned (an n-gram ban over a
    tiny vocabulary, say) falls back to its unprocessed logits. Arguments as for `process_logits`.
    """
    processed = process_logits(logits, history, generated, params)
    if processed is not logits:  # something was filtered or banned: never leave a row with nothing
        banned_all = processed.isneginf().all(dim=-1, keepdim=True)  # (B, 1)
        logits = torch.where(banned_all, logits, processed)  # then the raw distribution, never NaN
    if params.temperature > 0.0:
        ids = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    else:
        ids = logits.argmax(dim=-1)
    logprobs = logits.log_softmax(dim=-1).gather(-1, ids[:, None]).squeeze(-1)
    return ids, logprobs


def choose_next(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Next token ids (B,) from logits (B, V): greedy when temperature <= 0, else filtered sampling.

    A shorthand for `choose` without penalties; top_k <= 0 and top_p outside (0, 1) mean "off".
    """
    params = SamplingParams(
        temperature=max(temperature, 0.0),
        top_k=top_k if top_k is not None and top_k > 0 else None,
        top_p=top_p if top_p is not None and 0.0 < top_p < 1.0 else None,
    )
    no_history = torch.empty(logits.size(0), 0, dtype=torch.long, device=logits.device)
    return choose(logits.float(), no_history, no_history, params, generator)[0]
