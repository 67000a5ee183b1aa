import torch

from tinylm.generate import choose_next, generate_ids
from tinylm.generate.sampling import top_k_filter, top_p_filter
from tinylm.model import GPTConfig, build_model


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    out = top_k_filter(logits, 2)
    assert torch.isinf(out[0, [0, 2]]).all() and out[0, 1] == 5.0 and out[0, 3] == 4.0


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = top_p_filter(probs.log(), 0.75)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()
    assert torch.isfinite(top_p_filter(probs.log(), 0.1)[0, 0])  # the top token always stays


def test_greedy_and_seeded_sampling():
    logits = torch.randn(3, 50)
    assert torch.equal(choose_next(logits), logits.argmax(-1))
    a = choose_next(logits, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    b = choose_next(logits, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    allowed = torch.topk(logits, 10).indices
    assert all(a[i] in allowed[i] for i in range(3))


def _model(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16, **kw)
    return build_model(cfg).eval(), cfg


def _recompute(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def _recompute_cropped(model, prompt, n, block_size):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids[-block_size:]]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_decoding_matches_recomputation():
    for pos in ("learned", "rope", "alibi", "sinusoidal"):
        model, cfg = _model(pos=pos, n_kv_head=1)
        got = list(generate_ids(model, [1, 2, 3], max_new_tokens=10, block_size=cfg.block_size))
        assert got == _recompute(model, [1, 2, 3], 10), pos


def test_stops_and_context_limits():
    model, _ = _model(pos="rope")
    first = _recompute(model, [5, 6], 1)[0]
    assert list(generate_ids(model, [5, 6], max_new_tokens=10, block_size=32, stop_ids=[first])) == [first]
    long = list(generate_ids(model, list(range(1, 40)), max_new_tokens=8, block_size=32))
    assert long == _recompute_cropped(model, list(range(1, 40)), 8, 32)  # the window slides like nanoGPT
    beyond = list(generate_ids(model, [1, 2, 3], max_new_tokens=45, block_size=32))
    assert beyond == _recompute_cropped(model, [1, 2, 3], 45, 32)  # cached, then sliding past the window
    gru, _ = _model(kind="gru")
    assert list(generate_ids(gru, [1, 2], max_new_tokens=5, block_size=32)) == _recompute(gru, [1, 2], 5)
