"""Continuous batching against `generate_batch` on each prompt alone: requests joining a running batch at
staggered times, rows ending at different steps, the cursor wrapping and moving, per-row sampling."""

import logging
import threading
import time

import pytest
import torch

from tinylm.generate.continuous import Batcher, CachePerRequest, Finished, Request, SharedCache, Token
from tinylm.generate.engine import generate_batch
from tinylm.generate.sampling import SamplingParams
from tinylm.hf_model import HFCausalLM
from tinylm.model import GPTConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 2, 17, 30, 31, 32], [40], [22, 23, 24, 25]]


def _model(pos="rope", n_kv_head=None, block_size=48):
    cfg = GPTConfig(
        vocab_size=50, block_size=block_size, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32, pos=pos
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)  # sharper distributions: greedy choices far from ties
    return model


def _tokens(job) -> tuple[list[int], list[float], str]:
    tokens, logprobs = [], []
    for event in job.events(timeout=30):
        if isinstance(event, Token):
            tokens.append(event.id)
            logprobs.append(event.logprob)
    return tokens, logprobs, event.reason


def _alone(model, prompt, request):
    g = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
    return generate_batch(
        model,
        [prompt],
        max_new_tokens=request.max_new_tokens,
        block_size=model.config.block_size,
        params=request.params,
        stop_ids=request.stop_ids,
        generator=g,
    )[0]


def _staggered(batcher, requests):
    """Submit each request once the previous one has produced two tokens; collect every job's result."""
    results = [None] * len(requests)
    threads = []
    for i, request in enumerate(requests):
        got = threading.Event()
        seen = []

        def sink(event, i=i, got=got, seen=seen):
            seen.append(event)
            if len([e for e in seen if isinstance(e, Token)]) >= 2 or isinstance(event, Finished):
                got.set()

        job = batcher.submit(request, sink=sink)
        threads.append((job, seen))
        got.wait(timeout=30)
    deadline = time.time() + 30
    while not all(seen and isinstance(seen[-1], Finished) for _, seen in threads):
        assert time.time() < deadline, "jobs did not finish"
        time.sleep(0.005)
    for i, (_, seen) in enumerate(threads):
        tokens = [e for e in seen if isinstance(e, Token)]
        results[i] = ([t.id for t in tokens], [t.logprob for t in tokens], seen[-1].reason)
    return results


@pytest.mark.parametrize("pos,n_kv_head", [("rope", None), ("learned", 2), ("alibi", None)])
def test_greedy_staggered_requests_equal_each_prompt_alone(pos, n_kv_head):
    model = _model(pos, n_kv_head)
    stop = _alone(model, PROMPTS[0], Request(tuple(PROMPTS[0]), 20)).tokens[6]  # ends some rows early
    requests = [Request(tuple(p), 30 - len(p), stop_ids=(stop,)) for p in PROMPTS]
    requests += [Request(tuple(p), 12) for p in PROMPTS]  # more requests than rows: they wait for one
    with Batcher(model, max_batch=3) as batcher:
        results = _staggered(batcher, requests)
        assert batcher.stats()["running"] == 0
        assert batcher.steps > 0
    reasons = set()
    for request, (tokens, logprobs, reason) in zip(requests, results):
        want = _alone(model, list(request.prompt), request)
        assert tokens == want.tokens
        assert reason == want.finish_reason
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=0)
        reasons.add(reason)
    assert reasons == {"stop", "length"}


def test_cursor_wraps_and_moves_in_a_short_cache():
    """max_len 24 with budgets near it: the cursor reaches the end often and long prompts push it right."""
    model = _model(block_size=32)
    requests = [Request(tuple(p), 24 - len(p)) for p in PROMPTS] * 2
    with Batcher(model, max_batch=2, max_len=24) as batcher:
        results = _staggered(batcher, requests)
    for request, (tokens, _, _) in zip(requests, results):
        assert tokens == _alone(model, list(request.prompt), request).tokens


def test_each_row_samples_with_its_own_params_and_seed():
    model = _model()
    mixed = [
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=0.7, top_k=5, frequency_penalty=0.5, presence_penalty=0.3),
        SamplingParams(repetition_penalty=1.3, no_repeat_ngram_size=2),  # greedy with penalties
        SamplingParams(temperature=1.2, min_p=0.05),
    ]
    requests = [
        Request(tuple(p), 16, params=params, seed=s, top_logprobs=3)
        for s, (p, params) in enumerate(zip(PROMPTS, mixed))
    ]
    with Batcher(model, max_batch=4) as batcher:
        jobs = [batcher.submit(r) for r in requests]
        results = [_tokens(job) for job in jobs]
        again = _tokens(batcher.submit(requests[0]))
    for request, (tokens, _, _) in zip(requests, results):
        assert tokens == _alone(model, list(request.prompt), request).tokens
    assert again[0] == results[0][0]  # a seed repeats, whoever else shares the batch


def test_top_logprobs_are_sorted_and_hold_the_greedy_choice():
    model = _model()
    with Batcher(model, max_batch=2) as batcher:
        job = batcher.submit(Request(tuple(PROMPTS[1]), 5, top_logprobs=4))
        tokens = [e for e in job.events(timeout=30) if isinstance(e, Token)]
    assert len(tokens) == 5
    for t in tokens:
        assert len(t.top) == 4
        assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
        assert t.top[0] == (t.id, pytest.approx(t.logprob, abs=1e-5))


def test_cancel_frees_the_row_for_a_waiting_request():
    model = _model()
    with Batcher(model, max_batch=1) as batcher:
        first = batcher.submit(Request(tuple(PROMPTS[0]), 40))
        second = batcher.submit(Request(tuple(PROMPTS[1]), 3))
        events = first.events(timeout=30)
        assert isinstance(next(events), Token)
        assert batcher.stats() == {**batcher.stats(), "running": 1, "waiting": 1}
        first.cancel()
        rest = list(events)
        assert rest[-1] == Finished("cancelled")
        assert len(rest) - 1 < 39  # stopped well before its budget
        tokens, _, reason = _tokens(second)
        assert reason == "length" and len(tokens) == 3
        assert batcher.finished["cancelled"] == 1
        assert batcher.stats()["running"] == 0


def test_bad_requests_are_refused_and_calls_run_on_the_thread():
    model = _model()
    with Batcher(model, max_batch=1) as batcher:
        with pytest.raises(ValueError, match="prompt \\+ max_new_tokens <= 48"):
            batcher.submit(Request(tuple(range(40)), 9))
        with pytest.raises(ValueError, match="temperature"):
            batcher.submit(Request((1,), 2, params=SamplingParams(temperature=-1)))
        assert batcher.call(threading.current_thread).result(timeout=30).name == "tinylm-batcher"
        with pytest.raises(ZeroDivisionError):
            batcher.call(lambda: 1 / 0).result(timeout=30)


def _hf_model():
    """A tiny random Llama run through transformers (HFCausalLM), as a model tinylm does not convert is."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                                      initializer_range=0.5)  # fmt: skip
    return HFCausalLM(transformers.LlamaForCausalLM(config)).eval()


def test_a_transformers_model_takes_turns_and_each_request_decodes_as_alone():
    model = _hf_model()
    assert isinstance(Batcher(model).layout, CachePerRequest) and isinstance(
        Batcher(_model()).layout, SharedCache
    )
    stop = _alone(model, PROMPTS[0], Request(tuple(PROMPTS[0]), 20)).tokens[6]  # ends some rows early
    sampled = SamplingParams(temperature=0.8, top_k=20)
    requests = [Request(tuple(p), 30 - len(p), stop_ids=(stop,)) for p in PROMPTS]
    requests += [Request(tuple(p), 10, params=sampled, seed=i) for i, p in enumerate(PROMPTS)]
    with Batcher(model, max_batch=3) as batcher:
        results = _staggered(batcher, requests)
        assert batcher.stats()["running"] == 0 and batcher.layout.caches == {}  # every cache let go
    reasons = set()
    for request, (tokens, logprobs, reason) in zip(requests, results):
        want = _alone(model, list(request.prompt), request)
        assert (tokens, reason) == (want.tokens, want.finish_reason)
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=0)
        reasons.add(reason)
    assert reasons == {"stop", "length"}
    with Batcher(model, max_batch=1) as batcher:  # a cancelled request frees its row at once
        first = batcher.submit(Request(tuple(PROMPTS[0]), 40))
        second = batcher.submit(Request(tuple(PROMPTS[1]), 3))
        events = first.events(timeout=30)
        assert isinstance(next(events), Token)
        first.cancel()
        assert list(events)[-1] == Finished("cancelled")
        tokens, _, reason = _tokens(second)
        assert reason == "length" and len(tokens) == 3 and batcher.finished["cancelled"] == 1


@pytest.mark.parametrize("hf", [False, True])
def test_a_failing_pass_ends_only_the_requests_it_was_for(hf):
    """Token id 999 is out of the vocabulary: its prefill fails. With a shared cache a failing step ends
    every row of the batch; with a cache per request the others go on to give what they give alone."""
    model = _hf_model() if hf else _model()
    ok = Request(tuple(PROMPTS[0]), 12)
    with Batcher(model, max_batch=2) as batcher:
        good = batcher.submit(ok)
        events = good.events(timeout=30)
        assert isinstance(next(events), Token)  # running before the bad one joins
        bad = batcher.submit(Request((3, 999, 4), 5))
        assert list(bad.events(timeout=30))[-1].reason == "error"
        rest = list(events)
        assert rest[-1] == Finished("length")  # a failed prefill does not touch the other rows
        assert batcher.finished == {"error": 1, "length": 1}
        assert _tokens(batcher.submit(ok))[0] == _alone(model, PROMPTS[0], ok).tokens  # still serving
        jobs = [batcher.submit(Request(tuple(p), 12)) for p in PROMPTS[:2]]
        streams = [job.events(timeout=30) for job in jobs]
        firsts = [next(stream) for stream in streams]  # both rows running
        forward = model.forward

        def failing(idx, **kw):  # runs on the scheduler thread, so it may read the batcher's rows
            if hf:
                r = next(r for r, cache in batcher.layout.caches.items() if cache is kw["cache"])
                if batcher.rows[r].job is jobs[1]:
                    raise RuntimeError("boom")
            elif idx.size(1) == 1:
                raise RuntimeError("boom")
            return forward(idx, **kw)

        batcher.call(lambda: setattr(model, "forward", failing)).result(timeout=30)
        try:
            ends = [list(stream) for stream in streams]
        finally:
            batcher.call(lambda: delattr(model, "forward")).result(timeout=30)
    assert ends[1][-1] == Finished("error", "RuntimeError: boom")
    if hf:  # only the request whose pass failed ended; the other gave what it gives alone
        assert ends[0][-1] == Finished("length")
        assert [t.id for t in [firsts[0], *ends[0][:-1]]] == _alone(model, PROMPTS[0], ok).tokens
    else:  # one pass for both: both ended
        assert ends[0][-1] == Finished("error", "RuntimeError: boom")


def test_idle_passes_and_a_failed_admit(caplog):
    """An idle pass runs no forward (nothing logged); a failing admit ends the running and the joining
    requests with its error, and the batcher goes on serving."""
    model = _model()
    ok = Request(tuple(PROMPTS[0]), 6)
    with Batcher(model, max_batch=2) as batcher, caplog.at_level(logging.ERROR):
        assert batcher.call(lambda: 7).result(timeout=30) == 7
        assert _tokens(batcher.submit(Request((5, 6), 1)))[2] == "length"  # done at its prefill
        assert batcher.call(lambda: 8).result(timeout=30) == 8
        assert caplog.records == []
        running = batcher.submit(Request(tuple(PROMPTS[1]), 30))
        events = running.events(timeout=30)
        next(events)
        admit = batcher.layout.admit

        def fail_once(lengths):
            batcher.layout.admit = admit
            raise RuntimeError("no room")

        batcher.call(lambda: setattr(batcher.layout, "admit", fail_once)).result(timeout=30)
        joining = batcher.submit(Request(tuple(PROMPTS[2]), 5))
        assert list(events)[-1] == Finished("error", "RuntimeError: no room")
        assert list(joining.events(timeout=30)) == [Finished("error", "RuntimeError: no room")]
        assert _tokens(batcher.submit(ok))[0] == _alone(model, PROMPTS[0], ok).tokens
    assert [r.getMessage() for r in caplog.records] == ["decoding step failed"]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.call(lambda: 1)


def test_bad_models_are_refused():
    with pytest.raises(TypeError, match=r"needs a model with a KV cache .* found GRU"):
        Batcher(build_model(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_embd=8, kind="gru")))
