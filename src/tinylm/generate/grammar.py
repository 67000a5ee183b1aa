"""Structured output: generation held to a JSON schema by a grammar engine, llguidance.

`json_grammar(tokenizer, schema, stop_ids)` compiles a JSON schema (`True` or `{}`: any JSON value; see
`ANY_OBJECT` for any object) for a tokenizer and returns a `Grammar`; a schema the engine cannot compile
raises `GrammarError` with its reason: it never falls back to unconstrained text. Each row that generates
under a grammar gets its own `Matcher`: before a token is chosen, `Matcher.allowed` says which ids the
grammar allows next (the stop ids once the value is complete, and then only they), and `Matcher.advance`
moves it past the chosen id. The decoding loops (`tinylm.generate.engine`, `tinylm.generate.continuous`)
mask the logits with `constrain` before sampling, so penalties, temperature and filters work as usual on
what is left.

JSON is laid out as `json.dumps` lays it out (", " between items, ": " after keys, no other whitespace):
a small model given free whitespace can spend its whole budget on newlines. llguidance was chosen over
xgrammar by measuring both (bench/structured.py): the per-token cost of both is far below a decode step
on CPU, llguidance compiles a schema about 10x faster (a server compiles one per request), and it has no
dependencies where xgrammar pulls in triton (about 1 GB) and takes 2.5 s to import.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import llguidance
import numpy as np
import torch
from torch import Tensor

from tinylm.errors import TinylmError
from tinylm.tokenizers import BPETokenizer, HFTokenizer, Tokenizer, VocabTokenizer

JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_SCHEMA_BYTES = 1 << 20  # a schema is a request field; llguidance bounds the grammar it builds too


class GrammarError(TinylmError):
    """A schema (or grammar) the engine cannot compile, or a tokenizer it cannot constrain."""


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled grammar for one tokenizer and its stop ids: `matcher()` starts a row on it."""

    spec: str  # llguidance's grammar, serialized
    tokenizer: llguidance.LLTokenizer = field(repr=False)
    vocab_size: int

    def matcher(self) -> Matcher:
        return Matcher(self)


class Matcher:
    """One row's place in a grammar."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self._m = llguidance.LLMatcher(grammar.tokenizer, grammar.spec, log_level=0)
        if self._m.is_error():
            raise GrammarError(f"the grammar does not compile: {self._m.get_error()}")

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the ids the grammar allows next. None at all (a tokenizer without the
        characters the schema needs, such as a char vocabulary without `"`) is a `GrammarError`."""
        bits = np.frombuffer(self._m.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self.grammar.vocab_size].astype(bool)
        if self._m.is_error() or not allowed.any():
            error = self._m.get_error() if self._m.is_error() else "no token of its vocabulary fits"
            missing = re.search(r"has no character U\+([0-9A-F]{4,6})", error)
            reason = f"its vocabulary has no {chr(int(missing.group(1), 16))!r}" if missing else error[:300]
            raise GrammarError(
                f"this model's tokenizer cannot write what the JSON schema needs next: {reason}"
            )
        return allowed

    def advance(self, token: int) -> None:
        """Move past `token`, which `allowed` allowed; a token the grammar refuses is a bug of the caller."""
        if not self._m.consume_token(token):
            raise GrammarError(f"token {token} does not follow the grammar: {self._m.get_error()}")

    @property
    def done(self) -> bool:
        """The value is complete: only a stop id may follow."""
        return self._m.is_stopped()


def constrain(logits: Tensor, matchers: list[Matcher | None]) -> Tensor:
    """logits (B, V) with -inf wherever row b's matcher (if any) forbids the id."""
    if not any(matchers):
        return logits
    allowed = np.ones(tuple(logits.shape), dtype=bool)
    for b, m in enumerate(matchers):
        if m is not None:
            row = m.allowed()
            allowed[b] = False
            n = min(len(row), logits.size(-1))
            allowed[b, :n] = row[:n]
    return logits.masked_fill(~torch.from_numpy(allowed).to(logits.device), float("-inf"))


def json_grammar(tokenizer: Tokenizer, schema: Any, stop_ids: list[int] | tuple[int, ...]) -> Grammar:
    """The grammar of the JSON values `schema` (a JSON schema: a dict, or True for any value) allows,
    ended by one of `stop_ids`. Raises `GrammarError` with the engine's reason when it cannot compile."""
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema must be an object (or true), found {type(schema).__name__}")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as e:
        raise GrammarError(f"the JSON schema is not JSON: {e}") from None
    if len(text) > MAX_SCHEMA_BYTES:
        raise GrammarError(f"the JSON schema is {len(text)} bytes, more than {MAX_SCHEMA_BYTES}")
    ll_tokenizer = _ll_tokenizer(tokenizer, tuple(stop_ids))
    try:
        spec = llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_LAYOUT)
    except ValueError as e:
        raise GrammarError(f"the JSON schema cannot be compiled: {e}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(spec, ll_tokenizer)
    if failed:
        raise GrammarError(f"the JSON schema cannot be compiled: {'; '.join(messages)}")
    grammar = Grammar(spec, ll_tokenizer, tokenizer.vocab_size)
    grammar.matcher().allowed()  # a vocabulary that cannot even start the value fails now, not mid-reply
    return grammar


# -- the engine's view of a tokenizer: every id as bytes ------------------------------------------------
_LL_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], llguidance.LLTokenizer]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer, stop_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for `tokenizer` ending on `stop_ids`, built once (it takes ~0.5 s)."""
    if not stop_ids:
        raise GrammarError("structured output needs a stop token to end the value; this model has none")
    with _LOCK:
        built = _LL_TOKENIZERS.setdefault(tokenizer, {})
        if stop_ids not in built:
            built[stop_ids] = _build_ll_tokenizer(tokenizer, list(stop_ids))
        return built[stop_ids]


def _build_ll_tokenizer(tokenizer: Tokenizer, stop_ids: list[int]) -> llguidance.LLTokenizer:
    n = tokenizer.vocab_size
    if isinstance(tokenizer, HFTokenizer):
        backend = getattr(tokenizer.hf, "backend_tokenizer", None)
        if backend is None:
            raise GrammarError(
                "structured output needs a fast (Rust) Hugging Face tokenizer; this one is not"
            )
        return llguidance.LLTokenizer(backend.to_str(), n_vocab=n, eos_token=stop_ids)
    if isinstance(tokenizer, BPETokenizer):
        return llguidance.LLTokenizer(tokenizer.tok.to_str(), n_vocab=n, eos_token=stop_ids)
    if isinstance(tokenizer, VocabTokenizer) and tokenizer.kind == "char":
        wrapper = llguidance.TokenizerWrapper(_CharVocab(tokenizer, stop_ids))
        return llguidance.LLTokenizer(wrapper, n_vocab=n, eos_token=stop_ids)
    raise GrammarError(
        f"structured output needs a tokenizer whose ids are pieces of text (bpe, hf or char); this model's "
        f"is {getattr(tokenizer, 'kind', type(tokenizer).__name__)}, which does not keep the spacing"
    )


class _CharVocab:
    """A char tokenizer as llguidance's `TokenizerWrapper` reads one: each id's bytes, its special ids."""

    def __init__(self, tokenizer: VocabTokenizer, stop_ids: list[int]):
        self.eos_token_id = stop_ids[0]
        self.bos_token_id = None
        self.special_token_ids = sorted(tokenizer.special_tokens.values())
        special = set(self.special_token_ids)  # llguidance marks a special token's name with a 0xFF byte
        self.tokens = [(b"\xff" if i in special else b"") + s.encode() for i, s in enumerate(tokenizer.vocab)]
        self._ids = {s: i for i, s in enumerate(tokenizer.vocab) if i not in special}

    def __call__(self, text: str) -> list[int]:
        try:
            return [self._ids[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"the tokenizer has no character U+{ord(e.args[0]):04X}") from None
