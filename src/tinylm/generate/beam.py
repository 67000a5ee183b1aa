"""Beam search over token ids, step for step the same as transformers' `generate(num_beams=...)`.

One prompt, `num_beams` rows in one static KV cache: the prompt is prefilled once (batch 1) and copied into
every row, each step feeds the `num_beams` running tokens, and the cache rows follow their beams through
`index_select`. The scoring and stopping rules mirror transformers 5 (`GenerationMixin._beam_search`):

- the score of a beam is the sum of `log_softmax` of its float32 logits;
- each step keeps the best K = max(2, 1 + len(eos_ids)) * num_beams continuations of all beams; those
  ending in an eos token, or reaching `max_new_tokens`, finish, but only if they are among the best
  `num_beams` of the K; the best `num_beams` unfinished ones run on;
- a finished hypothesis scores sum_logprobs / generated_length ** length_penalty, where the generated
  length counts the new tokens including the final eos (not the prompt);
- at most `num_beams` finished hypotheses are kept; the search stops at `max_new_tokens`, once they are
  all full and `early_stopping is True`, or once the best running beam cannot beat the worst finished
  one: its score divided by the current length ** length_penalty (`early_stopping=False` or `True`), or
  by `max_new_tokens ** length_penalty` when `early_stopping="never"` and length_penalty > 0.

Tokens are kept as back-pointers (one small list per step) and spelled out only for the returned
hypotheses, so no step costs more than the model call as the sequences grow. A model with a beam search
of its own (`CausalLM.beam_search`: a model run through transformers has transformers') gets that one,
with the same arguments and result. What this module does not do: sampling, logits processors, batches of
prompts, or windows longer than the model's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tinylm.model import CausalLM, KVCache

_MASKED = -1.0e9  # the score transformers adds to rule a candidate out, kept for identical arithmetic


@dataclass
class _Finished:
    score: float
    step: int  # 1-based number of generated tokens, the last one included
    parent: int  # the running row (after step - 1) it extends
    token: int


@torch.no_grad()
def beam_search(
    model: CausalLM,
    prompt: Sequence[int],
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
) -> list[tuple[list[int], float]]:
    """The best `num_return_sequences` hypotheses after `prompt`, best first, as (new token ids, score).

    The token ids exclude the prompt and include the final eos if the hypothesis ended on one; the score
    is sum_logprobs / len(ids) ** length_penalty. Equals transformers' `generate(num_beams=num_beams,
    do_sample=False, ...)` for one prompt (see the module docstring for the rules). The model runs as it
    is: call `model.eval()` first to turn dropout off.
    """
    _check_args(model, prompt, num_beams, max_new_tokens, eos_ids, early_stopping, num_return_sequences)
    if model.beam_search is not None:  # e.g. transformers' own, for a model tinylm does not convert
        return model.beam_search(
            prompt,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
        )
    assert model.static_cache, "tinylm's beam search reorders the rows of a static KV cache"
    device = next(model.parameters()).device
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    n_keep = max(2, 1 + len(eos_ids)) * num_beams  # K, as transformers counts eos ids
    top_mask = torch.arange(n_keep, device=device) < num_beams  # only these may finish

    cache, logits = _prefill(model, prompt, num_beams, len(prompt) + max_new_tokens - 1)
    scores = torch.full((num_beams,), _MASKED, device=device)  # (k,) running sums of log-probs
    scores[0] = 0.0  # all rows hold the same prompt: only the first one may expand at step 1
    history: list[tuple[list[int], list[int]]] = []  # per step: (parent row, token) of each running row
    finished: list[_Finished] = []
    for step in range(1, max_new_tokens + 1):
        acc = (F.log_softmax(logits.float(), dim=-1) + scores[:, None]).flatten()  # (k * V,)
        cand_scores, flat = torch.topk(acc, n_keep)  # (K,) best first
        parents, tokens = flat // logits.size(-1), flat % logits.size(-1)
        done = torch.isin(tokens, eos) | (step == max_new_tokens)  # (K,)
        masked = cand_scores + done.float() * _MASKED  # finished candidates do not run on
        run = torch.topk(masked, num_beams).indices  # (k,)
        scores = masked[run]
        finished = _add_finished(
            finished, cand_scores, parents, tokens, done & top_mask, step, length_penalty, num_beams
        )
        history.append((parents[run].tolist(), tokens[run].tolist()))
        stop = _should_stop(finished, scores, num_beams, step, max_new_tokens, early_stopping, length_penalty)
        if stop or done.all():
            break
        _reorder(cache, parents[run])
        pos = torch.tensor([len(prompt) + step - 1], device=device)
        logits = model(tokens[run][:, None], input_pos=pos, cache=cache)[:, -1]  # (k, V)
    return [(_spell(f, history), f.score) for f in finished[:num_return_sequences]]


def _check_args(
    model: CausalLM,
    prompt: Sequence[int],
    num_beams: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    early_stopping: bool | str,
    num_return_sequences: int,
) -> None:
    """Raise ValueError naming every bad argument at once."""
    problems = []
    if len(prompt) == 0:
        problems.append("prompt is empty; it must hold at least one token")
    if num_beams < 1:
        problems.append(f"num_beams={num_beams} must be >= 1")
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens={max_new_tokens} must be >= 1")
    if not 1 <= num_return_sequences <= max(num_beams, 1):
        problems.append(f"num_return_sequences={num_return_sequences} must be in 1..num_beams={num_beams}")
    if early_stopping is not True and early_stopping is not False and early_stopping != "never":
        problems.append(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    if model.config.vocab_size < max(2, 1 + len(eos_ids)):
        problems.append(f"vocab_size={model.config.vocab_size} is too small for {len(eos_ids)} eos ids")
    needed = len(prompt) + max_new_tokens - 1
    if needed > model.config.block_size:
        problems.append(
            f"prompt ({len(prompt)} tokens) + max_new_tokens={max_new_tokens} - 1 = {needed} positions exceed "
            f"block_size={model.config.block_size}; shorten the prompt or generate fewer tokens"
        )
    if problems:
        raise ValueError("beam_search: " + "; ".join(problems))


def _prefill(model: CausalLM, prompt: Sequence[int], num_beams: int, max_len: int) -> tuple[KVCache, Tensor]:
    """Run the prompt once (batch 1); return a cache with the prompt in all `num_beams` rows and the
    next-token logits (num_beams, V) of every row."""
    device = next(model.parameters()).device
    cache = model.new_cache(1, max_len, device=device)
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # (1, T)
    logits = model(ids, input_pos=torch.arange(ids.size(1), device=device), cache=cache)[:, -1]  # (1, V)
    cache.layers = [(k.repeat(num_beams, 1, 1, 1), v.repeat(num_beams, 1, 1, 1)) for k, v in cache.layers]
    cache.batch_size = num_beams
    return cache, logits.expand(num_beams, -1)  # (k, V)


def _reorder(cache: KVCache, rows: Tensor) -> None:
    """Row i of every layer's keys/values becomes old row rows[i], in place."""
    for k, v in cache.layers:
        k.copy_(k.index_select(0, rows))
        v.copy_(v.index_select(0, rows))


def _add_finished(
    finished: list[_Finished],
    cand_scores: Tensor,
    parents: Tensor,
    tokens: Tensor,
    done: Tensor,
    step: int,
    length_penalty: float,
    num_beams: int,
) -> list[_Finished]:
    """The best `num_beams` of the old finished hypotheses and the candidates marked `done`, best first."""
    penalized = (cand_scores / (step**length_penalty)).tolist()  # float32 division, like transformers
    rows, ids = parents.tolist(), tokens.tolist()
    new = [_Finished(penalized[i], step, rows[i], ids[i]) for i in done.nonzero().flatten().tolist()]
    return sorted(finished + new, key=lambda f: -f.score)[:num_beams]


def _should_stop(
    finished: list[_Finished],
    scores: Tensor,
    num_beams: int,
    step: int,
    max_new_tokens: int,
    early_stopping: bool | str,
    length_penalty: float,
) -> bool:
    """Whether the search ends after `step` tokens, with `scores` (k,) the running beams' sums, best first.

    Nothing ends it while fewer than `num_beams` hypotheses have finished. Then `early_stopping is True`
    ends it, and otherwise the best running beam, scored at its hypothetical best length, must beat the
    worst finished hypothesis for the search to go on.
    """
    if len(finished) < num_beams:
        return False
    if early_stopping is True:
        return True
    best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else step
    best_possible = float(scores[0] / (best_length**length_penalty))
    return not best_possible > finished[-1].score


def _spell(hyp: _Finished, history: list[tuple[list[int], list[int]]]) -> list[int]:
    """The new token ids of a finished hypothesis, read back through the per-step parent pointers."""
    ids = [hyp.token]
    row = hyp.parent
    for s in range(hyp.step - 2, -1, -1):  # history[s] holds the running rows after step s + 1
        parents, tokens = history[s]
        ids.append(tokens[row])
        row = parents[row]
    return ids[::-1]
