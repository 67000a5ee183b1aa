"""Cut document sections into overlapping chunks, sized in tokens of the embedder's own tokenizer.

A chunk never spans two sections (two PDF pages, two JSONL records), so its source label stays exact. Its
token span is [start, end) within its section. Sizes are counted in the embedder's tokens so that a chunk
always fits the embedder's window and nothing is silently truncated.

This module knows no model: an embedder hands it a `Tokens` view of each text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tinylm.rag.documents import Section


class Tokens(Protocol):
    """A text cut into tokens: how many there are, and the text of the run [start, end) of them."""

    def __len__(self) -> int: ...

    def text(self, start: int, end: int) -> str: ...


@dataclass(frozen=True)
class CharSpans:
    """Tokens known by their character offsets in `source` (fast HF tokenizers): chunks keep the exact text."""

    source: str
    offsets: Sequence[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.offsets)

    def text(self, start: int, end: int) -> str:
        return self.source[self.offsets[start][0] : self.offsets[end - 1][1]]


@dataclass(frozen=True)
class TokenIds:
    """Tokens known by their ids (tinylm tokenizers): a chunk's text is the decoding of its ids."""

    ids: Sequence[int]
    decode: Callable[[Sequence[int]], str]

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, start: int, end: int) -> str:
        return self.decode(self.ids[start:end])


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its section label, its index in the document, its token span, its text."""

    section: str
    position: int
    start: int
    end: int
    text: str


def chunk_spans(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [start, end) of at most `size` tokens, each starting `size - overlap` after the last.

    The last span ends at `n_tokens`; no span is a mere tail of the one before it.
    """
    assert size >= 1 and 0 <= overlap < size, f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}"
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            break
        start += size - overlap
    return spans


def chunk_sections(
    sections: Sequence[Section], tokenize: Callable[[str], Tokens], size: int, overlap: int
) -> list[Chunk]:
    """Every section's chunks, numbered through the whole document; whitespace-only chunks are dropped."""
    chunks: list[Chunk] = []
    for section in sections:
        tokens = tokenize(section.text)
        for start, end in chunk_spans(len(tokens), size, overlap):
            text = tokens.text(start, end).strip()
            if text:
                chunks.append(Chunk(section.label, len(chunks), start, end, text))
    return chunks
