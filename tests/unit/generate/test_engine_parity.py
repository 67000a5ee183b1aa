"""The engine against transformers `generate` on the same weights: greedy, batched with left padding,
and with every logits processor on (greedy after penalties, so the comparison is exact)."""

import pytest
import torch

from tests.unit.tiny_hf import tiny_llama_config
from tinylm.convert import hf_to_tinylm
from tinylm.generate.engine import generate_batch
from tinylm.generate.sampling import SamplingParams


def _pair(family: str):
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=80,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=None,
            eos_token_id=None,
        )
    else:
        cfg = tiny_llama_config(
            vocab_size=80,
            bos_token_id=None,
            eos_token_id=None,  # no end-of-sequence: both sides generate every token
        )
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(8.0)  # sharper distributions: greedy choices far from ties
    ours, gcfg = hf_to_tinylm(hf)
    return hf, ours, gcfg


def _hf_generate(hf, prompts, new, **kw):
    """transformers on a left-padded batch; the new tokens of each row."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, pad_token_id=0, **kw)
    return out[:, width:].tolist()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_batched_equals_transformers(family):
    hf, ours, cfg = _pair(family)
    prompts = [[5, 6, 7, 8, 9], [11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 2]]
    want = _hf_generate(hf, prompts, 12, do_sample=False)
    got = generate_batch(ours, prompts, max_new_tokens=12, block_size=cfg.block_size)
    assert [g.tokens for g in got] == want


def test_penalties_equal_transformers():
    hf, ours, cfg = _pair("llama")
    prompts = [[5, 6, 5, 6, 5], [7, 7, 7]]
    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=2)
    # transformers counts its padding as history, so it runs one row at a time; our padding is ignored
    want = [_hf_generate(hf, [p], 10, do_sample=False, **kw)[0] for p in prompts]
    got = generate_batch(
        ours, prompts, max_new_tokens=10, block_size=cfg.block_size, params=SamplingParams(**kw)
    )
    assert [g.tokens for g in got] == want


def test_seeded_sampling_repeats():
    _, ours, _ = _pair("llama")
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [
            r.tokens
            for r in generate_batch(
                ours, [[1, 2, 3]], max_new_tokens=15, block_size=64, params=params, generator=g
            )
        ]

    assert run(4) == run(4)
    assert run(4) != run(5)
