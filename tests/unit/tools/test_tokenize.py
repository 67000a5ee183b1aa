"""`tinylm tokenize`: finding the tokenizer, cutting the text, showing it."""

import pytest
import torch
from rich.console import Console

from tinylm.checkpoint import save_checkpoint
from tinylm.errors import TinylmError
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer
from tinylm.tools.tokenize import find_tokenizer, show, tokenize, visible


def test_word_tokens_ids_and_unknowns():
    tok = train_tokenizer("word", ["the cat sat on the mat."])
    cut = tokenize(tok, "the dog sat.")
    assert cut.pieces == ["the", "<|unk|>", "sat", "."]  # Raschka's word splitter drops the spaces
    assert cut.ids == tok.encode("the dog sat.") and cut.unknown == 1
    d = cut.to_dict()
    assert d["count"] == 4 and d["characters"] == 12 and d["chars_per_token"] == 3.0
    assert d["tokens"][1] == {"id": tok.unk_id, "text": "<|unk|>"}


def test_bpe_pieces_join_to_the_text():
    tok = train_tokenizer("bpe", ["héllo wörld, hello world\n" * 30], vocab_size=300)
    cut = tokenize(tok, "hello wörld\nhi")
    assert "".join(cut.pieces) == "hello wörld\nhi" and cut.unknown == 0 and len(cut.ids) < 14


def test_visible_whitespace():
    assert visible(" a\tb\n") == "·a⇥b↵" and visible("x\n", breaks=True) == "x↵\n" and visible("") == "∅"


def test_finds_the_tokenizer_of_a_checkpoint_or_a_tokenizer_dir(tmp_path):
    tok = train_tokenizer("char", ["abc de"])
    tok.save(tmp_path / "tok")
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", model=build_model(config), config=config, tokenizer=tok, meta={})
    assert find_tokenizer(tmp_path / "ck").encode("bad") == tok.encode("bad")
    assert find_tokenizer(tmp_path / "tok").vocab_size == tok.vocab_size
    with pytest.raises(TinylmError, match="no such tokenizer or checkpoint directory"):
        find_tokenizer(tmp_path / "missing")
    with pytest.raises(TinylmError, match="no model 'not-a-model'"):
        find_tokenizer("not-a-model")


def test_show_prints_the_text_the_table_and_the_counts():
    tok = train_tokenizer("char", ["ab c\n"])
    console = Console(record=True, width=80)
    show(tokenize(tok, "ab c\nz"), console)
    out = console.export_text()
    assert (
        "ab·c↵" in out
        and "'\\n'" in out
        and "6 tokens, 6 characters, 1.00 characters per token, 1 unknown" in out
    )
