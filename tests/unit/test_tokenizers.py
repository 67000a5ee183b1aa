"""Unit tests for tinylm.tokenizers: each kind trains, round-trips, maps specials, saves and reloads.

Corpora are a few sentences written here; the hf kind is built locally from a tiny BPE, so nothing
downloads. Not covered: speed on real corpora (see the module docstring for the targets).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinylm.errors import TinylmError
from tinylm.tokenizers import (
    EOS_TOKEN,
    META_FILE,
    UNK_TOKEN,
    Tokenizer,
    load_tokenizer,
    tokenizer_stats,
    train_tokenizer,
)

CORPUS = [
    "Hello, do you like tea?",
    "In the sunlit terraces of the palace.",
    'It is the last he painted, you know," Mrs. Gisburn said with pardonable pride.',
    "Café au lait -- naïve résumé!",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face tokenizer directory made on the spot: tiny BPE wrapped in PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    bpe = train_tokenizer("bpe", CORPUS, vocab_size=300)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token=EOS_TOKEN)
    directory = tmp_path_factory.mktemp("hf_tok")
    hf.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def tokenizers(hf_dir: Path) -> dict[str, Tokenizer]:
    return {
        "char": train_tokenizer("char", CORPUS),
        "word": train_tokenizer("word", CORPUS),
        "bpe": train_tokenizer("bpe", CORPUS, vocab_size=300),
        "hf": load_tokenizer(hf_dir),
    }


KINDS = ["char", "word", "bpe", "hf"]


# --- every kind -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_interface(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok = tokenizers[kind]
    assert isinstance(tok, Tokenizer)
    assert tok.kind == kind
    assert tok.eos_token == EOS_TOKEN
    assert tok.special_tokens[EOS_TOKEN] == tok.eos_id
    assert tok.pad_id == tok.eos_id
    assert 0 <= tok.eos_id < tok.vocab_size


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_on_training_text(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok = tokenizers[kind]
    text = "Hello, do you like tea?"
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert len(tok.token_strings(ids)) == len(ids)


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_in_text_map_to_their_ids(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok = tokenizers[kind]
    ids = tok.encode(f"tea{EOS_TOKEN}tea")
    assert ids.count(tok.eos_id) == 1
    assert ids[0] != tok.eos_id and ids[-1] != tok.eos_id, "encode must not add BOS/EOS itself"
    assert EOS_TOKEN in tok.decode(ids)
    assert EOS_TOKEN not in tok.decode(ids, skip_special=True)
    assert tok.token_strings([tok.eos_id]) == [EOS_TOKEN]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_tokenizer(
    tokenizers: dict[str, Tokenizer], kind: str, tmp_path: Path
) -> None:
    tok = tokenizers[kind]
    tok.save(tmp_path / "nested" / "tok")
    meta = json.loads((tmp_path / "nested" / "tok" / META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["kind"] == kind
    loaded = load_tokenizer(tmp_path / "nested" / "tok")
    assert loaded.kind == kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.special_tokens == tok.special_tokens
    assert (loaded.eos_id, loaded.pad_id, loaded.bos_id, loaded.unk_id) == (
        tok.eos_id,
        tok.pad_id,
        tok.bos_id,
        tok.unk_id,
    )
    for text in [*CORPUS, f"unseen ✓ words{EOS_TOKEN}"]:
        assert loaded.encode(text) == tok.encode(text)


# --- char ---------------------------------------------------------------------------------------------


def test_char_vocab_is_sorted_chars_then_specials() -> None:
    tok = train_tokenizer("char", ["abca", "cb"])
    assert tok.vocab == ["a", "b", "c", EOS_TOKEN, UNK_TOKEN]
    assert tok.encode("cab") == [2, 0, 1]
    assert tok.special_tokens == {EOS_TOKEN: 3, UNK_TOKEN: 4}
    assert tok.encode("axb") == [0, tok.unk_id, 1]
    assert tok.decode([0, 4, 1]) == f"a{UNK_TOKEN}b"
    assert tok.unk_id == 4 and tok.bos_id is None


def test_char_specials_in_training_text_do_not_enter_the_vocab() -> None:
    tok = train_tokenizer("char", [f"ab{EOS_TOKEN}ba"])
    assert tok.vocab_size == 4
    assert tok.encode(f"a{EOS_TOKEN}") == [0, tok.eos_id]


@given(st.text(alphabet="abc xyz\n,.", max_size=50))
def test_char_round_trips_any_text_of_seen_chars(text: str) -> None:
    tok = train_tokenizer("char", ["abc xyz\n,."])
    assert tok.decode(tok.encode(text)) == text


def test_char_vocab_size_too_small_raises() -> None:
    with pytest.raises(TinylmError, match="too small"):
        train_tokenizer("char", ["abcd"], vocab_size=5)
    assert train_tokenizer("char", ["abcd"], vocab_size=100).vocab_size == 6


def test_char_stats_exact() -> None:
    tok = train_tokenizer("char", ["abc"])
    stats = tokenizer_stats(tok, ["abcd", "ab"])
    assert stats == {
        "vocab_size": 5.0,
        "tokens": 6.0,
        "characters": 6.0,
        "chars_per_token": 1.0,
        "unk_rate": pytest.approx(1 / 6),
    }


# --- word ---------------------------------------------------------------------------------------------


def test_word_splits_like_the_notes() -> None:
    tok = train_tokenizer("word", ["Hello, do you like tea?"])
    ids = tok.encode("Hello, do you like tea?")
    assert tok.token_strings(ids) == ["Hello", ",", "do", "you", "like", "tea", "?"]
    assert tok.decode(ids) == "Hello, do you like tea?"
    assert tok.vocab == [",", "?", "Hello", "do", "like", "tea", "you", EOS_TOKEN, UNK_TOKEN]


def test_word_unknown_words_map_to_unk() -> None:
    tok = train_tokenizer("word", ["Hello, do you like tea?"])
    ids = tok.encode("Hello, do you like coffee?")
    assert ids[5] == tok.unk_id
    assert tok.decode(ids) == f"Hello, do you like {UNK_TOKEN}?"
    assert tok.decode(ids, skip_special=True) == "Hello, do you like?"


def test_word_stats_exact() -> None:
    tok = train_tokenizer("word", ["do you like tea?"])
    stats = tokenizer_stats(tok, ["do you like coffee?"])
    assert stats == {
        "vocab_size": 7.0,
        "tokens": 5.0,
        "characters": 19.0,
        "chars_per_token": pytest.approx(3.8),
        "unk_rate": pytest.approx(0.2),
    }


def test_word_vocab_size_keeps_most_frequent_ties_alphabetical() -> None:
    tok = train_tokenizer("word", ["b b b a a c c d"], vocab_size=4)
    assert tok.vocab == ["a", "b", EOS_TOKEN, UNK_TOKEN]
    assert tok.encode("a b c d") == [0, 1, tok.unk_id, tok.unk_id]
    with pytest.raises(TinylmError, match="too small"):
        train_tokenizer("word", ["a b"], vocab_size=2)


def test_word_special_token_glued_to_words_still_maps() -> None:
    tok = train_tokenizer("word", [f"end.{EOS_TOKEN}start"])
    assert tok.vocab == [".", "end", "start", EOS_TOKEN, UNK_TOKEN]
    assert tok.encode(f"start{EOS_TOKEN}end") == [2, tok.eos_id, 1]


# --- bpe ----------------------------------------------------------------------------------------------


@given(text=st.text(max_size=40))
def test_bpe_round_trips_any_unicode(tokenizers: dict[str, Tokenizer], text: str) -> None:
    tok = tokenizers["bpe"]
    assert tok.decode(tok.encode(text)) == text


def test_bpe_round_trips_emoji_and_accents(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["bpe"]
    text = "naïve café 🙂👍🏽 Ünïcödé — 東京"
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk_id is None and tok.bos_id is None
    assert tok.special_tokens == {EOS_TOKEN: tok.eos_id}


def test_bpe_learns_merges_and_stats(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["bpe"]
    assert 257 < tok.vocab_size <= 300
    stats = tokenizer_stats(tok, ["the the the"])
    assert stats["characters"] == 11.0
    assert stats["tokens"] < 11.0, "merges should make tokens longer than one byte"
    assert stats["chars_per_token"] == pytest.approx(11.0 / stats["tokens"])
    assert stats["unk_rate"] == 0.0


def test_bpe_file_reads_with_transformers(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers["bpe"]
    tok.save(tmp_path)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    text = f"the palace{EOS_TOKEN}tea"
    assert fast.encode(text, add_special_tokens=False) == tok.encode(text)


def test_bpe_vocab_size_too_small_raises() -> None:
    with pytest.raises(TinylmError, match="too small"):
        train_tokenizer("bpe", CORPUS, vocab_size=257)


# --- hf -----------------------------------------------------------------------------------------------


def test_hf_wraps_the_transformers_tokenizer(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["hf"]
    bpe = tokenizers["bpe"]
    text = "Café au lait, you know."
    assert tok.encode(text) == bpe.encode(text)
    assert tok.vocab_size == bpe.vocab_size
    assert tok.hf.eos_token == EOS_TOKEN
    assert (tok.bos_id, tok.unk_id) == (None, None)


def test_hf_pad_token_is_used_when_set(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    bpe = train_tokenizer("bpe", CORPUS, vocab_size=300)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token=EOS_TOKEN, pad_token="<pad>")
    hf.save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert tok.pad_id == tok.special_tokens["<pad>"] != tok.eos_id


def test_hf_without_eos_raises(tmp_path: Path) -> None:
    train_tokenizer("bpe", CORPUS, vocab_size=300).tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TinylmError, match="no eos token"):
        load_tokenizer(tmp_path)


# --- errors -------------------------------------------------------------------------------------------


def test_load_from_empty_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(TinylmError, match=str(tmp_path)) as info:
        load_tokenizer(tmp_path)
    assert META_FILE in str(info.value) and "tokenizer.json" in str(info.value)


def test_load_from_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(TinylmError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_train_unknown_kind_raises(kind: str) -> None:
    with pytest.raises(TinylmError, match="unknown tokenizer kind"):
        train_tokenizer(kind, CORPUS)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format_version": 1, "kind": "morse"}, "unknown tokenizer kind"),
        ({"format_version": 2, "kind": "char", "vocab": []}, "format_version"),
        ({"format_version": 1, "kind": "char", "vocab": ["a"]}, "must hold"),
        ({"format_version": 1, "kind": "bpe"}, "bpe tokenizer file not found"),
    ],
)
def test_load_bad_saved_tokenizer_raises(tmp_path: Path, meta: dict, message: str) -> None:
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TinylmError, match=message):
        load_tokenizer(tmp_path)
