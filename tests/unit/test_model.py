"""Unit tests for tinylm.model: masking, positions, GQA, KV cache, packing, variants, config.

Tiny models (2 layers, 32 dims) on CPU; every test seeds torch.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tinylm.model import (
    GPT,
    GRULM,
    POSITIONS,
    GPTConfig,
    RMSNorm,
    apply_rope,
    build_model,
    count_params,
    rope_tables,
)

V = 37  # vocab size


def tiny(**overrides) -> GPTConfig:
    kw = dict(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32)
    kw.update(overrides)
    return GPTConfig(**kw)


def make(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny(**overrides)).eval()


def assert_causal(model: torch.nn.Module, T: int = 12) -> None:
    """Changing token t leaves logits before t unchanged and changes the logits at t."""
    torch.manual_seed(1)
    idx = torch.randint(0, V, (2, T))
    base = model(idx)
    for t in (0, 5, T - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4, f"logits at {t} ignore token {t}"


# ----------------------------------------------------------------------------------------------------------
# 1. Causal masking


@pytest.mark.parametrize("kind_pos", [("gpt", p) for p in POSITIONS] + [("gru", "learned")])
def test_causal(kind_pos):
    kind, pos = kind_pos
    assert_causal(make(kind=kind, pos=pos))


# ----------------------------------------------------------------------------------------------------------
# 2. Position types


@pytest.mark.parametrize("pos", POSITIONS)
def test_trains(pos):
    model = make(pos=pos).train()
    torch.manual_seed(2)
    idx = torch.randint(0, V, (2, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        logits = model(x)
        assert logits.shape == (2, 16, V)
        loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_sinusoidal_formula():
    model = make(pos="sinusoidal")
    table, d = model.sinusoid, 32
    assert table.shape == (32, d)
    assert "sinusoid" not in model.state_dict()
    torch.testing.assert_close(table[3, 0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(table[5, 4], torch.tensor(math.sin(5 / 10000 ** (4 / d))))
    torch.testing.assert_close(table[7, 9], torch.tensor(math.cos(7 / 10000 ** (8 / d))))


def test_alibi_slopes():
    model = make(pos="alibi", n_head=8)
    torch.testing.assert_close(model.alibi_slopes, torch.tensor([1 / 2**k for k in range(1, 9)]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence (the paper's interpolation)
    six = make(pos="alibi", n_head=6, n_embd=24).alibi_slopes
    torch.testing.assert_close(six, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_rope_matches_hf_llama():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    hf_config = LlamaConfig(
        hidden_size=32, num_attention_heads=4, rope_theta=500.0, max_position_embeddings=32
    )
    torch.manual_seed(3)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    pos = torch.tensor([[0, 1, 2, 9, 10, 11], [3, 4, 5, 6, 7, 31]])
    cos, sin = llama.LlamaRotaryEmbedding(hf_config)(q, pos)
    hf_q, hf_k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    ours_cos, ours_sin = rope_tables(32, 8, 500.0)
    rope = (ours_cos[pos][:, None], ours_sin[pos][:, None])
    torch.testing.assert_close(apply_rope(q, *rope), hf_q)
    torch.testing.assert_close(apply_rope(k, *rope), hf_k)


def test_rmsnorm_matches_hf_llama():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    torch.manual_seed(4)
    ours, hf = RMSNorm(16, 1e-6), llama.LlamaRMSNorm(16, eps=1e-6)
    ours.weight.data.normal_()
    hf.weight.data.copy_(ours.weight.data)
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(ours.to(torch.bfloat16)(x), hf.to(torch.bfloat16)(x))


# ----------------------------------------------------------------------------------------------------------
# 3. Attention: GQA equals MHA with repeated heads, and a hand-written reference


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_gqa_equals_mha(pos):
    gqa, mha = make(pos=pos, n_kv_head=2), make(pos=pos, n_kv_head=4)
    hs = 8

    def repeat_heads(t):  # (2 * hs, ...) -> (4 * hs, ...): kv head j serves query heads 2j and 2j+1
        return t.reshape(2, hs, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * hs, *t.shape[1:])

    state = gqa.state_dict()
    for name in [n for n in state if ".attn.qkv." in n]:
        q, k, v = state[name].split([4 * hs, 2 * hs, 2 * hs])
        state[name] = torch.cat([q, repeat_heads(k), repeat_heads(v)])
    mha.load_state_dict(state)
    idx = torch.randint(0, V, (2, 10))
    torch.testing.assert_close(mha(idx), gqa(idx), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "alibi"])
def test_attention_matches_reference(pos):
    """softmax(QK^T / sqrt(d) + bias + causal mask) V, written out; ALiBi's bias is -slope_h * (i - j)."""
    model = make(pos=pos)
    attn = model.h[0].attn
    torch.manual_seed(5)
    B, T, C, nh, hs = 2, 7, 32, 4, 8
    x = torch.randn(B, T, C)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=-1)
    q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    if pos == "alibi":
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        scores = scores - torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256])[:, None, None] * (i - j)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    expected = y @ attn.proj.weight.T + attn.proj.bias
    mask = model._attn_mask(torch.arange(T)[None], None, None)  # None (causal fast path) for learned
    torch.testing.assert_close(attn(x, None, mask), expected, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# 4. KV-cache decoding equals full recomputation


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("pos", POSITIONS)
def test_kv_cache_matches_full_forward(pos, n_kv_head):
    model = make(pos=pos, n_kv_head=n_kv_head)
    torch.manual_seed(6)
    idx = torch.randint(0, V, (2, 12))
    full = model(idx)
    cache = model.new_cache(2, 16)  # sized from the request, not block_size
    assert cache.max_len == 16 and cache.layers[0][0].shape == (2, n_kv_head, 16, 8)
    steps = [(0, 5), (5, 8)] + [(t, t + 1) for t in range(8, 12)]  # prefill, prefill chunk, decode
    with torch.no_grad():
        for start, end in steps:
            logits = model(idx[:, start:end], input_pos=torch.arange(start, end), cache=cache)
            torch.testing.assert_close(logits, full[:, start:end], atol=1e-5, rtol=0)


def test_cache_reuse_for_a_new_prompt():
    model = make(pos="rope", n_kv_head=2)
    torch.manual_seed(7)
    first, second = torch.randint(0, V, (1, 9)), torch.randint(0, V, (1, 4))
    cache = model.new_cache(1, 12)
    model(first, input_pos=torch.arange(9), cache=cache)
    logits = model(second, input_pos=torch.arange(4), cache=cache)
    torch.testing.assert_close(logits, model(second), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# 5. Packing, variants, parameters, embeddings, config


@pytest.mark.parametrize("pos", POSITIONS)
def test_packed_segments_equal_separate_sequences(pos):
    model = make(pos=pos)
    torch.manual_seed(8)
    a, b, c = torch.randint(0, V, (1, 5)), torch.randint(0, V, (1, 7)), torch.randint(0, V, (1, 4))
    packed = torch.cat([torch.cat([a, b], 1), torch.cat([c, b, torch.zeros(1, 1, dtype=torch.long)], 1)])
    segments = torch.tensor([[3] * 5 + [4] * 7, [0] * 4 + [1] * 7 + [2]])
    logits = model(packed, segment_ids=segments)
    for row, start, seq in ((0, 0, a), (0, 5, b), (1, 0, c), (1, 4, b)):
        alone = model(seq)
        torch.testing.assert_close(
            logits[row : row + 1, start : start + seq.size(1)], alone, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(prenorm=False),
        dict(norm="rmsnorm"),
        dict(mlp="swiglu", bias=False, norm="rmsnorm", pos="rope", n_kv_head=2),
        dict(mlp="relu"),
        dict(mlp="gelu_tanh"),
        dict(head_dim=16, intermediate_size=40, n_kv_head=1),
        dict(kind="gru", norm="rmsnorm", tie_embeddings=False),
    ],
)
def test_variants_run_and_are_causal(overrides):
    model = make(**overrides)
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, V)
    assert_causal(model)


def test_post_norm_has_no_final_norm():
    names = make(prenorm=False).state_dict()
    assert not any(n.startswith("ln_f") for n in names)
    assert "ln_f.weight" in make().state_dict()


def test_no_bias():
    model = make(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_tied_embeddings_share_storage():
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert count_params(untied) == count_params(tied) + V * 32
    tied.wte.weight.requires_grad_(False)
    assert count_params(tied, trainable_only=True) == count_params(tied) - V * 32


def test_init():
    model = make(n_layer=2)
    assert torch.all(model.h[0].attn.qkv.bias == 0)
    assert abs(model.h[0].attn.qkv.weight.std().item() - 0.02) < 0.003
    assert abs(model.h[0].attn.proj.weight.std().item() - 0.01) < 0.002  # 0.02 / sqrt(2 * n_layer)


@pytest.mark.parametrize("kind", ["gpt", "gru"])
def test_embeddings_are_lm_head_input(kind):
    model = make(kind=kind)
    idx = torch.randint(0, V, (2, 9))
    emb = model.embeddings(idx)
    assert emb.shape == (2, 9, 32)
    torch.testing.assert_close(model.lm_head(emb), model(idx))


def test_dropout_only_in_training():
    model = make(dropout=0.5)
    idx = torch.randint(0, V, (1, 8))
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_bad_config_names_every_problem():
    with pytest.raises(ValueError) as err:
        GPTConfig(n_embd=30, n_head=4, n_kv_head=3, pos="absolute")
    message = str(err.value)
    for field in ("n_embd=30", "n_kv_head=3", "pos='absolute'"):
        assert field in message, message


def test_config_round_trip():
    config = tiny(pos="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu", dropout=0.1)
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="did you mean 'n_embd'"):
        GPTConfig.from_dict({"n_embed": 32})


def test_misuse_is_reported():
    model, gru = make(), make(kind="gru")
    assert isinstance(model, GPT) and isinstance(gru, GRULM)
    with pytest.raises(AssertionError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(AssertionError, match="max_len"):
        model.new_cache(1, 33)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=model.new_cache(1, 4))
    with pytest.raises(ValueError, match="cache"):
        gru(torch.zeros(1, 2, dtype=torch.long), cache=model.new_cache(1, 4))
    with pytest.raises(ValueError, match="segment_ids"):
        gru(torch.zeros(1, 2, dtype=torch.long), segment_ids=torch.zeros(1, 2, dtype=torch.long))


def test_a_model_built_for_loading_skips_its_random_init_and_only_then(monkeypatch):
    """`weights_follow` (what load_checkpoint builds under) draws no random weights; outside it, init runs."""
    from tinylm.model import weights_follow

    calls = []
    for name in ("normal_", "kaiming_uniform_"):
        real = getattr(torch.nn.init, name)
        monkeypatch.setattr(
            torch.nn.init, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k)
        )
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, pos="rope")
    with weights_follow():
        build_model(cfg)
    assert calls == []
    build_model(cfg)
    assert len(calls) > 2 * cfg.n_layer
