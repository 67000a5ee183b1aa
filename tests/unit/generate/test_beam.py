"""Beam search against transformers' `generate(num_beams=...)` on tiny random Llama models.

The weights are copied into tinylm's GPT here, by a small helper (the converter module is not used), and
the logits are checked first; then the hypotheses, their order and their scores must match.
"""

import copy
import functools
import itertools

import pytest
import torch
import transformers

from tinylm.convert import hf_to_tinylm
from tinylm.generate.beam import beam_search
from tinylm.hf_model import HFCausalLM
from tinylm.model import GPT

SEEDS = (2, 3)
PROMPTS = ((5, 9, 17), (3, 40, 41, 12, 7, 60))
MAX_NEW = 12
INIT = 0.6  # peaked next-token distributions: beams disagree clearly, no near-ties


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not slow to a crawl when other tests share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _models(seed: int, init: float = INIT) -> tuple[transformers.LlamaForCausalLM, GPT]:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        initializer_range=init,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    return hf, hf_to_tinylm(hf)[0].eval()


def _liked_token(gpt: GPT, prompt, step: int) -> int:
    """The greedy token `step` tokens after the prompt (0 = the next one): an eos that beams will meet."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(step + 1):
            ids.append(int(gpt(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-1]


def _hf_beams(hf, prompt, eos: int | list[int], **kw) -> list[tuple[list[int], float]]:
    """transformers' returned hypotheses as (new ids, score), cut to each one's own generated length."""
    ids = torch.tensor([list(prompt)])
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        eos_token_id=eos,
        pad_token_id=eos[0] if isinstance(eos, list) else eos,
        return_dict_in_generate=True,
        output_scores=True,
        **kw,
    )
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()  # pad == eos: the padding alone cannot tell
    return [
        (row[len(prompt) : len(prompt) + n].tolist(), float(score))
        for row, n, score in zip(out.sequences, lengths, out.sequences_scores)
    ]


def _cases():
    """(hf, gpt, prompt, eos) for every model and prompt; eos = 2, and the model's first and second greedy
    tokens, so that some hypotheses end on eos at once and some a little later."""
    for seed, prompt in itertools.product(SEEDS, PROMPTS):
        hf, gpt = _models(seed)
        for eos in dict.fromkeys((2, _liked_token(gpt, prompt, 0), _liked_token(gpt, prompt, 1))):
            yield hf, gpt, prompt, eos


def _assert_same(ours, theirs, eos):
    """Same hypotheses in the same order, same scores; eos only at the end, else the full length."""
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    assert [ids for ids, _ in ours] == [ids for ids, _ in theirs]
    for (ids, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)
        assert not eos_ids & set(ids[:-1]) and (ids[-1] in eos_ids or len(ids) == MAX_NEW)


@pytest.mark.parametrize("seed", SEEDS)
def test_logits_match_transformers(seed):
    hf, gpt = _models(seed)
    idx = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx), hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_best_sequence_matches_transformers(num_beams, length_penalty, early_stopping):
    for hf, gpt, prompt, eos in _cases():
        kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
        ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
        assert len(ours) == 1
        _assert_same(ours, _hf_beams(hf, prompt, eos, **kw), eos)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_top_two_match_transformers(num_beams, early_stopping):
    ended_early = 0
    for (hf, gpt, prompt, eos), length_penalty in itertools.product(_cases(), (0.5, 2.0)):
        kw = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
        ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], num_return_sequences=2, **kw)
        assert len(ours) == 2 and ours[0][1] >= ours[1][1]
        _assert_same(ours, _hf_beams(hf, prompt, eos, num_return_sequences=2, **kw), eos)
        ended_early += sum(len(ids) < MAX_NEW for ids, _ in ours)
    assert ended_early > 0, "no hypothesis ended on eos: the cases no longer exercise finishing"


@pytest.mark.parametrize("num_beams", [2, 4])
def test_several_eos_ids_match_transformers(num_beams):
    """Three eos ids widen the candidates to 4 * num_beams, so that num_beams unfinished ones remain even
    when the 2nd to 4th likeliest first tokens all end; a flatter model keeps the second beam alive."""
    for seed in (0, 3):
        hf, gpt = _models(seed, init=0.1)
        prompt = PROMPTS[1]
        with torch.no_grad():
            eos = gpt(torch.tensor([prompt]))[0, -1].topk(4).indices[1:].tolist()
        for length_penalty in (1.0, 2.0):
            kw = dict(num_beams=num_beams, length_penalty=length_penalty, num_return_sequences=2)
            ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=eos, **kw)
            _assert_same(ours, _hf_beams(hf, prompt, eos, **kw), eos)


@pytest.mark.parametrize("early_stopping", [False, "never"])
def test_negative_length_penalty_matches_transformers(early_stopping):
    """With length_penalty <= 0, "never" bounds the running beams at their current length, like False."""
    for hf, gpt, prompt, eos in _cases():
        kw = dict(num_beams=2, length_penalty=-0.5, early_stopping=early_stopping, num_return_sequences=2)
        ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
        _assert_same(ours, _hf_beams(hf, prompt, eos, **kw), eos)


def test_a_model_run_through_transformers_gets_the_same_search():
    """HFCausalLM (an architecture tinylm does not convert) runs transformers' beam search: the same
    hypotheses and scores as tinylm's on the same weights, and the wrapped model's generation_config.json
    (here a repetition penalty and a minimum length) does not leak into it."""
    ended_early = 0
    for (hf, gpt, prompt, eos), early_stopping in itertools.product(_cases(), (False, "never")):
        wrapped = HFCausalLM(copy.deepcopy(hf))
        wrapped.hf.generation_config.repetition_penalty = 5.0
        wrapped.hf.generation_config.min_new_tokens = MAX_NEW
        kw = dict(num_beams=3, length_penalty=2.0, early_stopping=early_stopping, num_return_sequences=2)
        ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
        theirs = beam_search(wrapped, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
        _assert_same(theirs, ours, eos)
        ended_early += sum(len(ids) < MAX_NEW for ids, _ in theirs)
        assert wrapped.hf.generation_config.repetition_penalty == 5.0  # restored afterwards
    assert ended_early > 0, "no hypothesis ended on eos: the cases no longer exercise the cut at eos"
    hf, gpt = _models(3)
    prompt, eos = PROMPTS[0], _liked_token(gpt, PROMPTS[0], 2)  # greedy meets this eos early
    lengths = []
    for num_beams, eos_ids in ((1, [eos]), (1, []), (3, [])):  # greedy, and no eos ids at all
        kw = dict(num_beams=num_beams, length_penalty=2.0, num_return_sequences=num_beams)
        ours = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=eos_ids, **kw)
        theirs = beam_search(HFCausalLM(hf), prompt, max_new_tokens=MAX_NEW, eos_ids=eos_ids, **kw)
        _assert_same(theirs, ours, eos_ids or [-1])
        lengths.append([len(ids) for ids, _ in theirs])
    assert lengths[0][0] < MAX_NEW and lengths[1:] == [[MAX_NEW], [MAX_NEW] * 3]


def test_early_stopping_modes_change_the_search():
    """A case where the first greedy token is eos: `False` stops once the best running beam cannot win at
    its current length; "never" goes on, since with length_penalty > 0 it could at the full length."""
    hf, gpt = _models(2)
    prompt = PROMPTS[1]
    eos = _liked_token(gpt, prompt, 0)
    got = {}
    for early_stopping in (False, True, "never"):
        kw = dict(num_beams=2, length_penalty=2.0, early_stopping=early_stopping, num_return_sequences=2)
        got[early_stopping] = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
        _assert_same(got[early_stopping], _hf_beams(hf, prompt, eos, **kw), eos)
    assert [len(ids) for ids, _ in got[False]] == [1, 2]
    assert [len(ids) for ids, _ in got["never"]] == [MAX_NEW, MAX_NEW]
    assert got["never"][0][1] > got[False][0][1]


@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
def test_score_is_the_sum_of_logprobs_over_the_length_penalty(length_penalty):
    _, gpt = _models(3)
    prompt = PROMPTS[0]
    eos = _liked_token(gpt, prompt, 0)
    kw = dict(num_beams=3, length_penalty=length_penalty, early_stopping="never", num_return_sequences=3)
    hyps = beam_search(gpt, prompt, max_new_tokens=MAX_NEW, eos_ids=[eos], **kw)
    assert {len(ids) < MAX_NEW for ids, _ in hyps} == {True, False}  # both kinds of ending are scored
    for ids, score in hyps:
        full = torch.tensor([list(prompt) + ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(gpt(full)[0, len(prompt) - 1 : -1].float(), dim=-1)  # (n, V)
        total = logprobs.gather(1, torch.tensor(ids)[:, None]).sum().item()
        assert score == pytest.approx(total / len(ids) ** length_penalty, abs=1e-5)


def test_one_beam_is_greedy():
    _, gpt = _models(3)
    prompt = PROMPTS[0]
    [(ids, _)] = beam_search(gpt, prompt, num_beams=1, max_new_tokens=5)
    assert ids == [_liked_token(gpt, prompt, step) for step in range(5)]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(num_beams=2, max_new_tokens=4, early_stopping="always"), "early_stopping"),
        (dict(num_beams=2, max_new_tokens=4, early_stopping=1), "early_stopping"),
        (dict(num_beams=2, max_new_tokens=4, num_return_sequences=3), "num_return_sequences"),
        (dict(num_beams=2, max_new_tokens=200), "block_size"),
        (dict(num_beams=0, max_new_tokens=0), "num_beams=0 .*max_new_tokens=0"),
    ],
)
def test_bad_arguments_raise(kw, message):
    _, gpt = _models(2)
    with pytest.raises(ValueError, match=message):
        beam_search(gpt, PROMPTS[0], **kw)
