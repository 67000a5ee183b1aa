"""Tests for tinylm.rag.chunking: token spans with overlap, chunks that never cross sections."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tinylm.rag.chunking import CharSpans, TokenIds, chunk_sections, chunk_spans
from tinylm.rag.documents import Section


@pytest.mark.parametrize(
    ("n", "size", "overlap", "spans"),
    [
        (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
        (10, 4, 0, [(0, 4), (4, 8), (8, 10)]),
        (9, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 9)]),
        (4, 4, 3, [(0, 4)]),
        (3, 8, 2, [(0, 3)]),
        (0, 4, 1, []),
    ],
)
def test_spans_by_hand(n, size, overlap, spans):
    assert chunk_spans(n, size, overlap) == spans


def test_spans_cover_every_token_with_the_overlap_asked():
    for n in range(1, 40):
        spans = chunk_spans(n, 7, 3)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(end - start <= 7 for start, end in spans)
        assert all(b[0] == a[1] - 3 for a, b in pairwise(spans))


def _words(text: str) -> TokenIds:
    words = text.split()
    return TokenIds(list(range(len(words))), lambda ids: " ".join(words[i] for i in ids))


def test_chunks_are_numbered_through_the_document_and_stay_inside_sections():
    sections = [Section("page 1", "a b c d e"), Section("page 2", "   "), Section("page 3", "f g")]
    chunks = chunk_sections(sections, _words, size=3, overlap=1)
    assert [(c.section, c.position, c.start, c.end, c.text) for c in chunks] == [
        ("page 1", 0, 0, 3, "a b c"),
        ("page 1", 1, 2, 5, "c d e"),
        ("page 3", 2, 0, 2, "f g"),
    ]


def test_char_spans_keep_the_exact_source_text():
    source = "Hello,  World!\nBye"
    tokens = CharSpans(source, [(0, 5), (5, 6), (8, 13), (13, 14), (15, 18)])
    assert len(tokens) == 5
    assert tokens.text(0, 3) == "Hello,  World"
    assert tokens.text(2, 5) == "World!\nBye"
