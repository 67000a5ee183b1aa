"""Tokenizers: text <-> token ids behind one small interface, in four kinds.

- ``char``: one id per character seen in training, plus ``<|endoftext|>`` and ``<|unk|>``.
- ``word``: the word-level tokenizer of Raschka's "Build an LLM from scratch" (ch. 2), with ``<|unk|>``.
- ``bpe``: byte-level BPE trained with the Hugging Face ``tokenizers`` library; lossless on any unicode.
- ``hf``: any Hugging Face tokenizer directory on disk, through ``transformers.AutoTokenizer``.

Every kind saves to a directory holding ``tinylm_tokenizer.json`` (format version and kind, plus the
vocab for char/word), and ``load_tokenizer`` reads such a directory or any plain HF tokenizer directory.
A save is written into a temporary sibling and renamed into place; it replaces only an empty folder or a
tokenizer tinylm saved, never a folder holding anything else.

This module knows nothing about tensors, datasets, models or chat templates: it maps strings to lists of
ints and back. ``encode`` never adds BOS/EOS; callers that want them append ``eos_id`` themselves.
Nothing here downloads: HF tokenizers load with ``local_files_only=True``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import tokenizers as hft

from tinylm.data.formats import read_json, read_text
from tinylm.errors import DataError, TinylmError
from tinylm.files import check_input_file, check_output_dir, dir_written_aside, kind_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
FORMAT_VERSION = 1
META_FILE = "tinylm_tokenizer.json"
BPE_FILE = "tokenizer.json"
DEFAULT_BPE_VOCAB_SIZE = 1024
MAX_VOCAB_SIZE = 1 << 20  # 4x the largest vocabularies in use; the bpe trainer allocates ~72 bytes per entry
# What a saved tokenizer folder may hold (tinylm's files and those `save_pretrained` writes for an hf kind):
# a folder holding anything else is not replaced by a save.
TOKENIZER_FILES = frozenset(
    {
        META_FILE,
        BPE_FILE,
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "tokenizer.model",
        "spiece.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)
# The JSON files transformers reads from a model or tokenizer folder: each must hold a JSON object.
HF_JSON_FILES = (
    "config.json",
    "generation_config.json",
    BPE_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)

# Raschka, ch. 2: split on punctuation, double dashes and whitespace, keeping the separators.
_WORD_SPLIT_RE = re.compile(r'([,.:;?_!"()\']|--|\s)')
_WORD_JOIN_RE = re.compile(r'\s+([,.?!"()\'])')


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer kind offers. Ids are plain ints in ``range(vocab_size)``."""

    kind: str
    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int | None
    unk_id: int | None
    special_tokens: dict[str, int]

    @property
    def eos_token(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...

    def token_strings(self, ids: Sequence[int]) -> list[str]: ...

    def save(self, directory: str | Path) -> None: ...


# ---------------------------------------------------------------------------------------------------
# char and word: a fixed vocab list, differing only in how text splits into units and how units join.


def _split_words(text: str) -> list[str]:
    return [item.strip() for item in _WORD_SPLIT_RE.split(text) if item.strip()]


def _join_words(tokens: list[str]) -> str:
    return _WORD_JOIN_RE.sub(r"\1", " ".join(tokens))


_SPLIT: dict[str, Callable[[str], Iterable[str]]] = {"char": list, "word": _split_words}
_JOIN: dict[str, Callable[[list[str]], str]] = {"char": "".join, "word": _join_words}
_VOCAB_SPECIALS = (EOS_TOKEN, UNK_TOKEN)
_VOCAB_SPECIALS_RE = re.compile("(" + "|".join(re.escape(t) for t in _VOCAB_SPECIALS) + ")")


def _split_specials(text: str) -> list[str]:
    """Split text around ``<|endoftext|>``/``<|unk|>``; odd-indexed pieces are the special tokens."""
    return _VOCAB_SPECIALS_RE.split(text)


class VocabTokenizer:
    """The ``char`` and ``word`` kinds: ``vocab[i]`` is the string of id ``i``; the specials come last."""

    def __init__(self, kind: str, vocab: Sequence[str]):
        assert kind in _SPLIT, f"VocabTokenizer kind must be char or word, got {kind!r}"
        missing = [t for t in _VOCAB_SPECIALS if t not in vocab]
        if missing or len(set(vocab)) != len(vocab):
            raise TinylmError(
                f"a {kind} tokenizer vocab must hold unique entries including {list(_VOCAB_SPECIALS)}; "
                f"missing {missing}, {len(vocab) - len(set(vocab))} duplicate(s)"
            )
        self.kind = kind
        self.vocab = list(vocab)
        self._ids = {s: i for i, s in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab)
        self.special_tokens = {t: self._ids[t] for t in _VOCAB_SPECIALS}
        self.eos_id = self.special_tokens[EOS_TOKEN]
        self.pad_id = self.eos_id
        self.unk_id: int | None = self.special_tokens[UNK_TOKEN]
        self.bos_id: int | None = None

    @property
    def eos_token(self) -> str:
        return EOS_TOKEN

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        split, get, unk = _SPLIT[self.kind], self._ids.get, self.unk_id
        for i, piece in enumerate(_split_specials(text)):
            if i % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend([get(unit, unk) for unit in split(piece)])
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        specials = set(self.special_tokens.values()) if skip_special else set()
        return _JOIN[self.kind]([self.vocab[i] for i in ids if i not in specials])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def save(self, directory: str | Path) -> None:
        save_dir(directory, lambda d: _write_meta(d, {"kind": self.kind, "vocab": self.vocab}))


def _train_char(texts: Iterable[str], vocab_size: int | None) -> VocabTokenizer:
    chars: set[str] = set()
    for text in texts:
        for i, piece in enumerate(_split_specials(text)):
            if i % 2 == 0:
                chars.update(piece)
    if not chars:
        raise TinylmError("cannot train a char tokenizer: the training texts hold no characters")
    needed = len(chars) + len(_VOCAB_SPECIALS)
    if vocab_size is not None and vocab_size < needed:
        raise TinylmError(
            f"vocab_size={vocab_size} is too small for a char tokenizer: the texts hold {len(chars)} "
            f"distinct characters, which with {len(_VOCAB_SPECIALS)} special tokens need {needed}; "
            "raise vocab_size or leave it unset"
        )
    return VocabTokenizer("char", [*sorted(chars), *_VOCAB_SPECIALS])


def _train_word(texts: Iterable[str], vocab_size: int | None) -> VocabTokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        for i, piece in enumerate(_split_specials(text)):
            if i % 2 == 0:
                counts.update(_split_words(piece))
    if not counts:
        raise TinylmError("cannot train a word tokenizer: the training texts hold no words")
    words = list(counts)
    if vocab_size is not None:
        room = vocab_size - len(_VOCAB_SPECIALS)
        if room < 1:
            raise TinylmError(
                f"vocab_size={vocab_size} is too small for a word tokenizer: it needs at least "
                f"{len(_VOCAB_SPECIALS) + 1} (one word plus {list(_VOCAB_SPECIALS)})"
            )
        words = sorted(words, key=lambda w: (-counts[w], w))[:room]
    return VocabTokenizer("word", [*sorted(words), *_VOCAB_SPECIALS])


# ---------------------------------------------------------------------------------------------------
# bpe: byte-level BPE from the `tokenizers` library, saved as a standard tokenizer.json.


class BPETokenizer:
    """The ``bpe`` kind: a byte-level ``tokenizers.Tokenizer`` whose only special token is EOS."""

    kind = "bpe"

    def __init__(self, tok: hft.Tokenizer):
        eos_id = tok.token_to_id(EOS_TOKEN)
        if eos_id is None:
            raise TinylmError(f"a bpe tokenizer must hold the special token {EOS_TOKEN!r}; this one does not")
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = eos_id
        self.pad_id = eos_id
        self.bos_id: int | None = None
        self.unk_id: int | None = None
        self.special_tokens = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    @property
    def eos_token(self) -> str:
        return EOS_TOKEN

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id decoded alone; a token holding part of a multi-byte character shows U+FFFD."""
        return [self.tok.decode([i], skip_special_tokens=False) for i in ids]

    def save(self, directory: str | Path) -> None:
        def write(d: Path) -> None:
            self.tok.save(str(d / BPE_FILE))
            _write_meta(d, {"kind": self.kind})

        save_dir(directory, write)


def _train_bpe(texts: Iterable[str], vocab_size: int | None) -> BPETokenizer:
    vocab_size = DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size
    alphabet = hft.pre_tokenizers.ByteLevel.alphabet()
    smallest = len(alphabet) + 1 + 1  # the 256 bytes, EOS, and at least one merge
    if vocab_size < smallest:
        raise TinylmError(
            f"vocab_size={vocab_size} is too small for a byte-level bpe tokenizer: it needs at least "
            f"{smallest} (256 bytes + {EOS_TOKEN!r} + one merge)"
        )
    tok = hft.Tokenizer(hft.models.BPE())
    tok.pre_tokenizer = hft.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hft.decoders.ByteLevel()
    trainer = hft.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return BPETokenizer(tok)


# ---------------------------------------------------------------------------------------------------
# hf: a pretrained Hugging Face tokenizer from a local directory.


class HFTokenizer:
    """The ``hf`` kind: wraps a ``transformers`` tokenizer, exposed as ``.hf`` (e.g. for chat templates)."""

    kind = "hf"

    def __init__(self, hf: PreTrainedTokenizerBase, source: str = "the tokenizer"):
        if hf.eos_token_id is None:
            raise TinylmError(
                f"{source} has no eos token; tinylm needs one to end sequences. "
                "Set eos_token in its tokenizer_config.json"
            )
        self.hf = hf
        self.vocab_size = len(hf)
        self.eos_id: int = hf.eos_token_id
        self.pad_id: int = hf.eos_token_id if hf.pad_token_id is None else hf.pad_token_id
        self.bos_id: int | None = hf.bos_token_id
        self.unk_id: int | None = hf.unk_token_id
        added = {t.content: i for i, t in hf.added_tokens_decoder.items() if t.special}
        named = dict(zip(hf.all_special_tokens, hf.all_special_ids))
        self.special_tokens = {**added, **named}

    @property
    def eos_token(self) -> str:
        return self.hf.eos_token

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id decoded alone, as the wrapped tokenizer decodes it."""
        return [self.hf.decode([i], skip_special_tokens=False) for i in ids]

    def save(self, directory: str | Path) -> None:
        def write(d: Path) -> None:
            self.hf.save_pretrained(str(d))
            _write_meta(d, {"kind": self.kind})

        save_dir(directory, write)


def _load_hf(directory: Path) -> HFTokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise TinylmError(
            "loading a Hugging Face tokenizer needs transformers: pip install transformers"
        ) from e
    try:
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:  # what transformers raises for damaged files
        raise DataError(f"{directory}: not a loadable Hugging Face tokenizer: {e}") from None
    return HFTokenizer(hf, source=f"the Hugging Face tokenizer in {directory}")


# ---------------------------------------------------------------------------------------------------
# Public entry points.

_TRAINERS: dict[str, Callable[[Iterable[str], int | None], Tokenizer]] = {
    "char": _train_char,
    "word": _train_word,
    "bpe": _train_bpe,
}
TRAINABLE_KINDS = tuple(_TRAINERS)


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int | None = None) -> Tokenizer:
    """Train a ``char``, ``word`` or ``bpe`` tokenizer on ``texts`` (read once, so a generator is fine).

    ``vocab_size``: char — optional cap; a cap below the characters seen + 2 is an error, a larger one
    changes nothing. word — keep the ``vocab_size - 2`` most frequent words (ties alphabetical), the rest
    encode to ``<|unk|>``. bpe — target size, default 1024, at least 258. At most ``MAX_VOCAB_SIZE``.
    """
    if kind not in _TRAINERS:
        hint = " (hf tokenizers are loaded with load_tokenizer, not trained)" if kind == "hf" else ""
        raise TinylmError(
            f"unknown tokenizer kind {kind!r} to train; expected one of {list(TRAINABLE_KINDS)}{hint}"
        )
    if vocab_size is not None and (
        not isinstance(vocab_size, int)
        or isinstance(vocab_size, bool)
        or not 1 <= vocab_size <= MAX_VOCAB_SIZE
    ):
        raise TinylmError(
            f"vocab_size: expected an integer in 1..{MAX_VOCAB_SIZE:,} (or none, for the kind's default), "
            f"found {vocab_size!r}"
        )
    return _TRAINERS[kind](texts, vocab_size)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a directory written by ``Tokenizer.save``, or any Hugging Face tokenizer directory on disk.
    DataError naming the file for a folder that holds no tokenizer or a damaged one."""
    directory = Path(path)
    if not directory.is_dir():
        found = f"found {kind_of(directory.stat().st_mode)}" if directory.exists() else "it does not exist"
        raise DataError(f"{directory}: expected a tokenizer directory, {found}")
    check_hf_folder(directory)
    if (directory / META_FILE).is_file():
        return _load_saved(directory)
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        return _load_hf(directory)
    raise DataError(
        f"no tokenizer in {directory}: expected {META_FILE} (saved by tinylm) "
        "or tokenizer.json / tokenizer_config.json (a Hugging Face tokenizer)"
    )


def check_hf_folder(directory: Path, error: type[TinylmError] = DataError) -> None:
    """Before anything reads a model or tokenizer folder: every file in it must be a regular file (a FIFO
    would block the reader for ever), and every JSON file transformers reads must hold a JSON object."""
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir():
            check_input_file(entry, "file", error)
    for name in HF_JSON_FILES:
        path = directory / name
        data = read_json(path) if path.is_file() else {}
        if not isinstance(data, dict):
            raise error(f"{path}: expected a JSON object ({{...}}), found a JSON {type(data).__name__}")


def check_save_dir(directory: str | Path) -> Path:
    """`directory` if a tokenizer may be saved there: a new folder, an empty one, or a tokenizer folder
    tinylm saved (which the save replaces); else a TinylmError saying what is in the way."""
    directory = check_output_dir(directory, "tokenizer")
    if not directory.is_dir():
        return directory
    entries = list(directory.iterdir())
    if not entries:
        return directory
    others = sorted(
        e.name for e in entries if e.name not in TOKENIZER_FILES or e.is_symlink() or not e.is_file()
    )
    if others or not (directory / META_FILE).is_file():
        found = f"files that are not a tokenizer's: {', '.join(others[:3])}" if others else f"no {META_FILE}"
        raise TinylmError(
            f"{directory}: expected a new or empty folder, or a tokenizer tinylm saved, found {found}"
            f"{' ...' if len(others) > 3 else ''}; save into a new folder (nothing was written)"
        )
    return directory


def save_dir(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(folder)` on a new temporary sibling of `directory`, then rename it into place, so a save
    killed midway leaves the old tokenizer (or nothing), never half of one. `directory` may be new, empty
    or a tokenizer tinylm saved (`check_save_dir`); nothing else is replaced."""
    target = check_save_dir(directory)
    with dir_written_aside(target) as tmp:
        write(tmp)
    return target


def tokenizer_stats(tok: Tokenizer, texts: Iterable[str]) -> dict[str, float]:
    """Token count, character count, characters per token and the share of tokens that are unk."""
    tokens = characters = unks = 0
    for text in texts:
        ids = tok.encode(text)
        tokens += len(ids)
        characters += len(text)
        if tok.unk_id is not None:
            unks += ids.count(tok.unk_id)
    return {
        "vocab_size": float(tok.vocab_size),
        "tokens": float(tokens),
        "characters": float(characters),
        "chars_per_token": characters / tokens if tokens else 0.0,
        "unk_rate": unks / tokens if tokens else 0.0,
    }


def _write_meta(directory: str | Path, fields: dict[str, Any]) -> None:
    meta = {"format_version": FORMAT_VERSION, **fields}
    (Path(directory) / META_FILE).write_text(
        json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )


def _load_saved(directory: Path) -> Tokenizer:
    meta_path = directory / META_FILE
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{meta_path}: format_version {found!r} is not supported; expected {FORMAT_VERSION}")
    kind = meta.get("kind")
    if kind in ("char", "word"):
        vocab = meta.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise DataError(f"{meta_path}: a {kind} tokenizer needs 'vocab', a list of strings")
        try:
            return VocabTokenizer(kind, vocab)
        except TinylmError as e:
            raise DataError(f"{meta_path}: {e}") from None
    if kind == "bpe":
        bpe_path = directory / BPE_FILE
        check_input_file(bpe_path, "bpe tokenizer file")
        try:
            tok = hft.Tokenizer.from_str(read_text(bpe_path))
        except Exception as e:  # the Rust side raises plain Exception for a malformed file
            raise DataError(f"{bpe_path}: not a tokenizers file ({e})") from None
        try:
            return BPETokenizer(tok)
        except TinylmError as e:
            raise DataError(f"{bpe_path}: {e}") from None
    if kind == "hf":
        return _load_hf(directory)
    raise DataError(f"{meta_path}: unknown tokenizer kind {kind!r}; expected one of char, word, bpe, hf")
