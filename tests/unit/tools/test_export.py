"""tools/export.py: `tinylm export` writes a new Hugging Face folder that transformers loads, never into one
that holds anything, and keeps a Q/A prompt layout as the chat template."""

import dataclasses
import os

import torch

from tests.unit.tiny_hf import SENTENCES, assert_close_logits, logits_of, randomize
from tinylm.checkpoint import save_checkpoint
from tinylm.cli import main
from tinylm.model import GPT, GPTConfig
from tinylm.tokenizers import train_tokenizer


def test_export_command_writes_a_new_hf_directory(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = train_tokenizer("bpe", SENTENCES, vocab_size=300)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                       pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
    model = randomize(GPT(config))
    ck = save_checkpoint(tmp_path / "ck", model=model, config=config, tokenizer=tok, meta={})
    assert main(["export", str(ck), str(tmp_path / "hf")]) == 0
    assert "wrote " + str(tmp_path / "hf") in capsys.readouterr().out
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    ids = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    assert_close_logits(logits_of(back, ids), logits_of(model, ids))
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

    import tinylm.tools.export

    real_load = tinylm.tools.export.load

    def load_while_someone_writes(*args, **kw):  # a file lands in the empty target during the load
        (tmp_path / "empty" / "theirs.txt").write_text("keep me")
        return real_load(*args, **kw)

    monkeypatch.setattr(tinylm.tools.export, "load", load_while_someone_writes)
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
    assert_close_logits(logits_of(back, ids), logits_of(want, ids))
    assert (tmp_path / "out" / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------------------------------------
# Import from disk, resolve, cache
