"""Parity tests for tinylm.generate.sampling against transformers' logits processors.

Random logits (B=3, V=50) and histories drawn from a few tokens (so tokens and n-grams repeat), with -1
padding on the left, on the right and in between. Transformers' processors take unpadded input_ids, so
they run per row on the row's tokens. Frequency/presence penalties are checked against a loop.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tinylm.generate.sampling import (
    SamplingParams,
    choose,
    frequency_presence_penalty,
    min_p_filter,
    no_repeat_ngram,
    process_logits,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

B, V, T = 3, 50, 16
SEEDS = [0, 1, 2, 3]


def _logits(seed: int, ties: bool = False) -> torch.Tensor:
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 2
    return logits.round() if ties else logits  # rounding makes many equal logits


def _tokens(seed: int, width: int) -> torch.Tensor:
    """(B, width) ids from a small alphabet: row 0 unpadded, row 1 left-padded, row 2 with scattered -1."""
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(0, 6, (B, width), generator=g)
    ids[1, : width // 3] = -1
    ids[2, torch.rand(width, generator=g) < 0.3] = -1
    ids[2, -1] = -1  # a row that stopped early ends in padding
    return ids


def _rows(ids: torch.Tensor) -> list[torch.Tensor]:
    """Each row's tokens without padding, shaped (1, L) as transformers expects."""
    return [row[row >= 0][None] for row in ids]


def _per_row(processor, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.cat([processor(row, logits[b : b + 1].clone()) for b, row in enumerate(_rows(ids))])


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal -inf positions and close finite values."""
    assert torch.equal(actual == float("-inf"), expected == float("-inf")), "different tokens filtered"
    finite = expected != float("-inf")
    assert finite.any(dim=-1).all(), "every row keeps a token"
    torch.testing.assert_close(actual[finite], expected[finite])


def _frequency_presence_reference(logits, generated, frequency, presence):
    out = logits.clone()
    for b, row in enumerate(generated.tolist()):
        for token, count in Counter(t for t in row if t >= 0).items():
            out[b, token] -= frequency * count + presence
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(seed, penalty):
    logits, history = _logits(seed), _tokens(seed, T)
    expected = _per_row(RepetitionPenaltyLogitsProcessor(penalty), history, logits)
    assert_same(repetition_penalty(logits, history, penalty), expected)
    assert not torch.equal(expected, logits)  # the penalty did something


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 20])
def test_no_repeat_ngram_matches_transformers(seed, n):
    logits, history = _logits(seed), _tokens(seed, T)
    expected = _per_row(NoRepeatNGramLogitsProcessor(n), history, logits)
    assert_same(no_repeat_ngram(logits, history, n), expected)
    if n <= 2:
        assert torch.isinf(expected).any()  # the small alphabet repeats n-grams, so something is banned


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 5, 50, 80])
def test_top_k_matches_transformers(seed, ties, k):
    logits = _logits(seed, ties)
    assert_same(top_k_filter(logits, k), TopKLogitsWarper(k)(None, logits))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p", [0.01, 0.3, 0.9, 1.0])
def test_top_p_matches_transformers(seed, ties, p):
    logits = _logits(seed, ties)
    assert_same(top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 1.0])
def test_min_p_matches_transformers(seed, ties, min_p):
    logits = _logits(seed, ties)
    assert_same(min_p_filter(logits, min_p), MinPLogitsWarper(min_p)(None, logits))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("frequency", "presence"), [(0.5, 0.0), (0.0, 1.5), (0.3, -0.4)])
def test_frequency_presence_match_openai_formula(seed, frequency, presence):
    logits, generated = _logits(seed), _tokens(seed, 8)
    expected = _frequency_presence_reference(logits, generated, frequency, presence)
    assert_same(frequency_presence_penalty(logits, generated, frequency, presence), expected)


def _pipeline_reference(logits, history, generated, params: SamplingParams):
    """Transformers' processors per row, with the frequency/presence loop where OpenAI's penalty goes."""
    logits = _per_row(RepetitionPenaltyLogitsProcessor(params.repetition_penalty), history, logits)
    logits = _frequency_presence_reference(
        logits, generated, params.frequency_penalty, params.presence_penalty
    )
    logits = _per_row(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size), history, logits)
    if params.temperature == 0.0:
        return logits
    warpers = LogitsProcessorList(
        [
            TemperatureLogitsWarper(params.temperature),
            TopKLogitsWarper(params.top_k),
            TopPLogitsWarper(params.top_p),
            MinPLogitsWarper(params.min_p),
        ]
    )
    return warpers(None, logits)


FULL = SamplingParams(
    temperature=0.8,
    top_k=20,
    top_p=0.9,
    min_p=0.05,
    repetition_penalty=1.2,
    frequency_penalty=0.3,
    presence_penalty=0.2,
    no_repeat_ngram_size=2,
)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.5])
def test_pipeline_matches_transformers_order(seed, temperature):
    params = SamplingParams(**{**FULL.__dict__, "temperature": temperature})
    logits, history, generated = _logits(seed), _tokens(seed, T), _tokens(seed + 7, 6)
    expected = _pipeline_reference(logits, history, generated, params)
    assert_same(process_logits(logits, history, generated, params), expected)


def test_defaults_leave_logits_alone():
    logits, history = _logits(0), _tokens(0, T)
    assert torch.equal(process_logits(logits, history, history, SamplingParams()), logits)


def test_validate_lists_every_bad_field():
    assert SamplingParams().validate() == []
    assert FULL.validate() == []
    bad = SamplingParams(
        temperature=-1.0, top_k=0, top_p=0.0, min_p=1.5, repetition_penalty=0.0, no_repeat_ngram_size=-2
    )
    problems = bad.validate()
    expected = {
        "temperature": "-1.0",
        "top_k": "0",
        "top_p": "0.0",
        "min_p": "1.5",
        "repetition_penalty": "0.0",
        "no_repeat_ngram_size": "-2",
    }
    assert len(problems) == len(expected)
    for (name, value), problem in zip(expected.items(), problems):
        assert problem.startswith(f"{name}: expected ") and problem.endswith(f"found {value}"), problem
    assert SamplingParams(top_p=1.5).validate() == ["top_p: expected a value in (0, 1] or None, found 1.5"]


@pytest.mark.parametrize("seed", SEEDS)
def test_choose_greedy_is_argmax_of_processed_logits(seed):
    params = SamplingParams(**{**FULL.__dict__, "temperature": 0.0})
    logits, history, generated = _logits(seed), _tokens(seed, T), _tokens(seed + 7, 6)
    processed = process_logits(logits, history, generated, params)
    ids, logprobs = choose(logits, history, generated, params)
    assert torch.equal(ids, processed.argmax(dim=-1))
    assert (logprobs <= 0).all()
    torch.testing.assert_close(logprobs, processed.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))


@pytest.mark.parametrize("seed", SEEDS)
def test_choose_sampling_repeats_with_the_same_seed(seed):
    logits, history, generated = _logits(seed), _tokens(seed, T), _tokens(seed + 7, 6)
    processed = process_logits(logits, history, generated, FULL)
    draws = [choose(logits, history, generated, FULL, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    (ids, logprobs), (again, again_logprobs) = draws[0], draws[1]
    assert torch.equal(ids, again) and torch.equal(logprobs, again_logprobs)
    for ids, logprobs in draws:
        assert torch.isfinite(processed.gather(-1, ids[:, None])).all()  # only kept tokens are drawn
        assert (logprobs <= 0).all()
        torch.testing.assert_close(logprobs, processed.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1))
