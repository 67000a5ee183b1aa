"""hf_model.py: a tiny random GPT-Neo (which tinylm does not convert) runs through transformers behind the
GPT's interface: load, greedy generation equal to transformers' own, left padding, embeddings, freezing and
LoRA by HF module names, training with exact resume, and clear errors for what it cannot do."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tinylm
from tests.conftest import tiny_config, write_config
from tests.unit.tiny_hf import save_tiny_gpt_neo
from tinylm.checkpoint import is_hf_checkpoint, load_checkpoint
from tinylm.config import load_config
from tinylm.errors import TinylmError
from tinylm.hf_model import HFCausalLM, HFModelConfig
from tinylm.tools.memory import resolve_subject
from tinylm.train.freeze import apply_freezing, group_of
from tinylm.train.lora import apply_lora, merge_lora

PROMPTS = ["the cat sat on", "a dog"]  # different lengths once tokenized


@pytest.fixture(scope="module")
def neo(tmp_path_factory) -> tuple[Path, tinylm.LM, torch.nn.Module]:
    """(the GPT-Neo directory, `tinylm.load` of it, the same weights in transformers), built once."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("neo")
    path = save_tiny_gpt_neo(root / "tiny-neo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYLM_HOME", str(root / "home"))
        lm = tinylm.load(path)
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return path, lm, hf


def _ids(lm: tinylm.LM, text: str) -> torch.Tensor:
    return torch.tensor([lm.tokenizer.encode(text)])


# ----------------------------------------------------------------------------------------------------------
# Load, generate, embed


def test_load_stores_an_hf_checkpoint_and_says_it_runs_through_transformers(neo, caplog):
    from transformers import AutoModelForCausalLM

    path, lm, hf = neo
    assert isinstance(lm.model, HFCausalLM) and not lm.model.training
    assert lm.config == HFModelConfig("gpt_neo", vocab_size=hf.config.vocab_size, block_size=128, n_embd=32)
    ck = lm.checkpoint.path
    assert ck.parent.name == "models" and ck.name.startswith("tiny-neo-")
    assert {"config.json", "model.safetensors", "tinylm.json"} <= {p.name for p in ck.iterdir()}
    assert (ck / "tokenizer" / "tokenizer.json").is_file() and is_hf_checkpoint(ck)
    meta = json.loads((ck / "tinylm.json").read_text())
    assert meta["model"]["kind"] == "hf" and meta["source"] == str(path.resolve())

    with caplog.at_level(logging.WARNING, logger="tinylm.hf_model"):
        again = load_checkpoint(ck)
    assert [r.getMessage() for r in caplog.records] == [
        "tinylm: gpt_neo runs through transformers' AutoModelForCausalLM, not tinylm's GPT: "
        "no CUDA graphs or continuous batching"
    ]
    ids = _ids(lm, PROMPTS[0])
    with torch.no_grad():
        expected = hf(ids).logits
        torch.testing.assert_close(again.model(ids), expected)
        direct = AutoModelForCausalLM.from_pretrained(ck, local_files_only=True)  # a plain HF directory too
        torch.testing.assert_close(direct(ids).logits, expected)


def test_greedy_tokens_equal_transformers_generate(neo):
    _, lm, hf = neo
    expected = []
    for text in PROMPTS:
        ids = _ids(lm, text)
        out = hf.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=lm.tokenizer.eos_id)
        expected.append(out[0, ids.size(1) :].tolist())
    assert all(len(set(tokens)) >= 3 for tokens in expected), expected  # not one token over and over
    alone = [lm.complete([p], raw=True, max_new_tokens=10)[0].tokens for p in PROMPTS]
    batched = [c.tokens for c in lm.complete(PROMPTS, raw=True, max_new_tokens=10)]
    assert alone == batched == expected
    assert lm.generate(PROMPTS, raw=True, max_new_tokens=10) == [lm.tokenizer.decode(t) for t in expected]


def test_beam_search_equals_transformers_generate(neo):
    _, lm, hf = neo
    eos = lm.tokenizer.eos_id
    for text in PROMPTS:
        ids = _ids(lm, text)
        out = hf.generate(ids, do_sample=False, num_beams=3, max_new_tokens=10, pad_token_id=eos)
        expected = out[0, ids.size(1) :].tolist()
        expected = expected[: expected.index(eos) + 1] if eos in expected else expected
        got = lm.complete([text], raw=True, num_beams=3, max_new_tokens=10)[0]
        assert got.tokens == expected and len(set(expected)) >= 3, expected


def test_generation_reads_the_prompts_once_then_one_token_per_step(neo, monkeypatch):
    _, lm, _ = neo
    shapes = []
    forward = lm.model.hf.forward

    def spy(**kw):
        shapes.append(tuple(kw["input_ids"].shape))
        return forward(**kw)

    monkeypatch.setattr(lm.model.hf, "forward", spy)
    lm.complete(PROMPTS, raw=True, max_new_tokens=10, stop_token_ids=[])
    width = max(len(lm.tokenizer.encode(p)) for p in PROMPTS)
    assert shapes == [(2, width)] + [(2, 1)] * 9  # one left-padded batch through transformers' cache


@torch.no_grad()
def test_left_padded_rows_give_the_logits_of_each_row_alone(neo):
    _, lm, _ = neo
    long, short = (lm.tokenizer.encode(p) for p in PROMPTS)
    pad = len(long) - len(short)
    idx = torch.tensor([long, [0] * pad + short])
    key_mask = idx.new_ones(idx.shape, dtype=torch.bool)
    key_mask[1, :pad] = False
    logits = lm.model(idx, positions=key_mask.cumsum(1) - 1, key_mask=key_mask)  # (2, T, V)
    torch.testing.assert_close(logits[0], lm.model(torch.tensor([long]))[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, pad:], lm.model(torch.tensor([short]))[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_embed_is_the_final_hidden_state(neo):
    _, lm, hf = neo
    last = lm.embed(PROMPTS, pooling="last")
    mean = lm.embed(PROMPTS)
    assert last.shape == mean.shape == (2, 32)
    for row, text in enumerate(PROMPTS):
        hidden = hf.transformer(_ids(lm, text)).last_hidden_state[0]  # (T, 32), after ln_f
        torch.testing.assert_close(last[row], hidden[-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[row], hidden.mean(0), atol=1e-5, rtol=1e-5)


def test_what_transformers_models_cannot_do_raises_clearly(neo, tmp_path):
    from transformers import T5Config

    _, lm, _ = neo
    idx = _ids(lm, PROMPTS[0])
    with pytest.raises(ValueError, match="or input_pos with a cache from its new_cache"):
        lm.model(idx, input_pos=torch.arange(idx.size(1)), cache=object())
    with pytest.raises(ValueError, match="packed rows"):
        lm.model(idx, segment_ids=torch.zeros_like(idx))
    with pytest.raises(TinylmError, match="the estimate models tinylm's GPT op by op"):
        resolve_subject(lm.checkpoint.path)

    T5Config(d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4).save_pretrained(tmp_path / "t5")
    with pytest.raises(TinylmError, match=r"t5: model_type 't5' is not a causal language model"):
        tinylm.load(tmp_path / "t5")


# ----------------------------------------------------------------------------------------------------------
# Freezing, LoRA, training


def test_freeze_groups_read_hf_module_names(neo):
    assert group_of("hf.transformer.wte.weight") == group_of("hf.model.embed_tokens.weight") == "emb"
    assert group_of("hf.transformer.h.0.attn.attention.q_proj.weight") == "attn"
    assert group_of("hf.model.layers.0.self_attn.o_proj.weight") == "attn"
    assert group_of("hf.model.layers.0.post_attention_layernorm.weight") == "ln"
    assert group_of("hf.model.norm.weight") == group_of("hf.transformer.ln_f.bias") == "ln"
    assert group_of("hf.model.layers.3.mlp.down_proj.weight") == group_of(
        "hf.model.decoder.layers.0.fc1.weight"
    )
    assert group_of("hf.lm_head.weight") == "other"

    model = HFCausalLM.from_pretrained(neo[0])
    apply_freezing(model, emb=True, ln=True, attn=True, ff=False, other=True, keep=["h.1.ln_"])
    trainable = {n.removeprefix("hf.transformer.") for n, p in model.named_parameters() if p.requires_grad}
    mlp = {f"h.{i}.mlp.{fc}.{p}" for i in (0, 1) for fc in ("c_fc", "c_proj") for p in ("weight", "bias")}
    assert trainable == mlp | {f"h.1.{ln}.{p}" for ln in ("ln_1", "ln_2") for p in ("weight", "bias")}


def test_lora_wraps_the_gpt_neo_projections_and_merges_back(neo):
    model = HFCausalLM.from_pretrained(neo[0])
    names = set(model.state_dict())
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(idx)
    assert apply_lora(model, r=2, alpha=4.0, targets=("q_proj", "v_proj")) == 2 * 2 * (2 * 32 + 32 * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), before)  # B = 0: the adapters start as the identity
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
        adapted = model(idx)
        assert not torch.allclose(adapted, before)
        merged = merge_lora(model)
        assert set(merged.state_dict()) == names
        torch.testing.assert_close(merged(idx), adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(TinylmError, match=r"Linear layers: hf\.transformer\.h\.N\.attn\.attention\.k_proj"):
        apply_lora(HFCausalLM.from_pretrained(neo[0]))  # tinylm's default targets name its own GPT


def _run_config(tmp_path: Path, neo_dir: Path, qa_file: Path, out: str, **train) -> Path:
    cfg = tiny_config(tmp_path, qa_file, train={"max_steps": 4, "log_every_n_steps": 2, **train})
    del cfg["model"], cfg["tokenizer"]  # both come from the pretrained model
    cfg |= {"out_dir": str(tmp_path / out), "init_from": str(neo_dir)}
    cfg["checkpoint"] |= {"every_n_train_steps": 2, "save_top_k": -1}
    return write_config(tmp_path, cfg, f"{out}.yaml")


def test_fit_saves_hf_checkpoints_and_resumes_exactly(neo, qa_file, tmp_path, monkeypatch):
    from tinylm.train import fit

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    straight = fit(load_config(_run_config(tmp_path, neo[0], qa_file, "straight"))) / "checkpoints"
    step4 = straight / "step-000004"
    assert {"config.json", "model.safetensors", "trainer_state.pt", "config.yaml"} <= {
        p.name for p in step4.iterdir()
    }
    assert json.loads((step4 / "tinylm.json").read_text())["step"] == 4
    weights = load_file(step4 / "model.safetensors")
    pretrained = load_file(neo[0] / "model.safetensors")
    assert set(weights) == set(pretrained) and not torch.equal(
        weights["transformer.h.0.mlp.c_fc.weight"], pretrained["transformer.h.0.mlp.c_fc.weight"]
    )

    shutil.copytree(straight / "step-000002", tmp_path / "half")
    resume = _run_config(tmp_path, neo[0], qa_file, "resumed")
    resumed = fit(load_config(resume, [f"checkpoint.resume={tmp_path / 'half'}"])) / "checkpoints"
    assert not (resumed / "step-000002").exists()  # it started at step 2, from the copy's weights and state
    again = load_file(resumed / "step-000004" / "model.safetensors")
    assert all(torch.equal(again[k], weights[k]) for k in weights)  # the same steps as the straight run

    lm = tinylm.load(resumed / "last")
    assert isinstance(lm.model, HFCausalLM) and lm.checkpoint.meta["step"] == 4
    assert lm.complete(["what is item one"], max_new_tokens=3)[0].tokens


def test_fit_with_lora_saves_the_merged_weights(neo, qa_file, tmp_path, monkeypatch):
    from tinylm.train import fit

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    lora = {"r": 2, "alpha": 4.0, "targets": ["q_proj", "v_proj"]}
    run = fit(load_config(_run_config(tmp_path, neo[0], qa_file, "lora", max_steps=2, lora=lora)))
    weights = load_file(run / "checkpoints" / "last" / "model.safetensors")
    pretrained = load_file(neo[0] / "model.safetensors")
    assert set(weights) == set(pretrained)  # plain HF names: the adapters are merged in
    changed = {k for k in pretrained if not torch.equal(weights[k], pretrained[k])}
    assert changed == {f"transformer.h.{i}.attn.attention.{x}_proj.weight" for i in (0, 1) for x in "qv"}


def test_fit_refuses_what_a_transformers_model_cannot_do(neo, qa_file, tmp_path, monkeypatch):
    from tinylm.train import fit

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    path = _run_config(tmp_path, neo[0], qa_file, "packed")
    with pytest.raises(TinylmError, match=r"2 problem\(s\)") as e:
        fit(load_config(path, ["data.packing=true", "model.dropout=0.1"]))
    assert "data.packing: a transformers model cannot keep packed rows apart" in str(e.value)
    assert "model: dropout cannot be set on a transformers model; it keeps the settings of" in str(e.value)
