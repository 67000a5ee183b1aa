"""The decoding loop: chunked read-back, the all-banned guard, and the CUDA-graph fast path against eager."""

import pytest
import torch

from tinylm.generate import engine, graphs
from tinylm.generate.engine import generate_batch
from tinylm.generate.sampling import SamplingParams, choose
from tinylm.model import GPT, GPTConfig


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=61, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope", **kw
    )
    return GPT(cfg).eval()


PROMPTS = [[5, 9, 2, 7, 1, 3], [4], [8, 8, 2]]


GREEDY = SamplingParams()


def _run(model, params=GREEDY, stop_ids=(), new=20, seed=None):
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed) if seed else None
    rows = generate_batch(
        model, PROMPTS, max_new_tokens=new, block_size=64, params=params, stop_ids=stop_ids, generator=gen
    )
    return [(r.tokens, [round(x, 4) for x in r.logprobs], r.finish_reason) for r in rows]


@pytest.mark.parametrize("every", [3, 7, 64])
def test_chunked_read_back_gives_the_same_rows(monkeypatch, every):
    model = _model()
    stop = _run(model, new=12)[0][0][4]  # a token row 0 produces: that row stops early, the others need not
    references = []
    for params in (SamplingParams(), SamplingParams(temperature=0.9, top_k=20, repetition_penalty=1.3)):
        references.append(_run(model, params, stop_ids=[stop], seed=3))
        monkeypatch.setitem(engine.SYNC_EVERY, "cpu", every)
        assert _run(model, params, stop_ids=[stop], seed=3) == references[-1]
        monkeypatch.setitem(engine.SYNC_EVERY, "cpu", 1)
    greedy = references[0]
    assert greedy[0][2] == "stop" and greedy[0][0][-1] == stop and len(greedy[0][0]) <= 5


def test_until_ends_the_batch_early_with_the_same_tokens_so_far():
    model = _model()
    full = generate_batch(model, PROMPTS, max_new_tokens=12, block_size=64)
    asked = []
    rows = generate_batch(
        model,
        PROMPTS,
        max_new_tokens=12,
        block_size=64,
        until=lambda rows: asked.append(1) or len(asked) == 4,
    )
    assert [r.tokens for r in rows] == [r.tokens[:4] for r in full]


def test_generation_past_the_context_window_keeps_going():
    model = _model()
    rows = generate_batch(model, PROMPTS, max_new_tokens=70, block_size=64)
    assert [len(r.tokens) for r in rows] == [70, 70, 70]


def test_a_row_with_every_token_banned_falls_back_to_its_logits():
    logits = torch.randn(2, 3)
    history = torch.tensor([[0, 1, 0, 1, 0], [2, 2, 2, 2, 2]])
    params = SamplingParams(temperature=1.0, no_repeat_ngram_size=1)  # every token seen is banned
    ids, logprobs = choose(logits, history, history, params, torch.Generator().manual_seed(0))
    assert ids[0].item() == 2  # row 0: tokens 0 and 1 banned, 2 left
    assert torch.isfinite(logprobs).all() and 0 <= ids[1].item() < 3  # row 1 would have been all -inf
    ids_greedy, _ = choose(logits, history, history, SamplingParams(no_repeat_ngram_size=1))
    assert ids_greedy[1].item() != 2 or logits[1].argmax().item() == 2


def test_bucketed_cache_lengths():
    assert graphs.bucket(17, 2048) == 256 and graphs.bucket(256, 2048) == 256
    assert graphs.bucket(257, 2048) == 512 and graphs.bucket(300, 300) == 300


def test_compiled_cpu_decode_step_equals_eager(monkeypatch):
    model = _model(norm="rmsnorm", mlp="swiglu")
    stop = _run(model, new=24)[1][0][9]
    eager = [
        _run(model, p, stop_ids=[stop], new=24) for p in (GREEDY, SamplingParams(repetition_penalty=1.2))
    ]
    monkeypatch.setenv("TINYLM_COMPILE_DECODE", "1")  # opt-in on the CPU
    assert graphs.enabled(model)
    for params, expected in zip((GREEDY, SamplingParams(repetition_penalty=1.2)), eager):
        got = _run(model, params, stop_ids=[stop], new=24)
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[2] for g in got] == [e[2] for e in expected]
        flat = [lp for g in got for lp in g[1]]
        assert flat == pytest.approx([lp for e in expected for lp in e[1]], abs=1e-3)
    assert len(model.__dict__["_decode_steps"]) == 1  # one shape, compiled once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_equals_eager(monkeypatch, dtype):
    model = _model(norm="rmsnorm", mlp="swiglu").to("cuda", dtype)
    assert graphs.enabled(model)
    # plain greedy runs whole chunks in one graph; with a penalty, the step graph and an eager choice
    for params in (GREEDY, SamplingParams(repetition_penalty=1.2)):
        monkeypatch.delenv("TINYLM_CUDA_GRAPHS", raising=False)
        stop = _run(model, params, new=40)[1][0][9]  # row 1 stops at its 10th token (or earlier)
        with torch.inference_mode():  # graphs built under inference_mode serve calls without it too
            fast = _run(model, params, stop_ids=[stop], new=40)
        assert _run(model, params, stop_ids=[stop], new=40) == fast  # replaying the same graphs again
        assert len(model.__dict__["_decode_steps"]) == 1  # one shape, one step graph
        monkeypatch.setenv("TINYLM_CUDA_GRAPHS", "0")
        assert not graphs.enabled(model)
        eager = _run(model, params, stop_ids=[stop], new=40)
        n = 40 if dtype == torch.float32 else 8  # bf16: compiled and eager may round a near-tie apart
        assert [f[0][:n] for f in fast] == [e[0][:n] for e in eager]
        assert [f[2] for f in fast] == [e[2] for e in eager] or dtype == torch.bfloat16
        assert fast[1][2] == "stop" and len(fast[1][0]) <= 10
        if dtype == torch.float32:
            flat = [lp for f in fast for lp in f[1]]
            assert flat == pytest.approx([lp for e in eager for lp in e[1]], abs=1e-3)
