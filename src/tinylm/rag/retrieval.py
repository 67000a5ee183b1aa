"""Retrieval: the chunks best matching a question, and the numbered-sources context a model answers from.

Three ways to rank (`retrieval`): "dense" embeds the question with the embedder the database was built
with (loaded once per process) and ranks chunks by cosine similarity; "lexical" ranks them by BM25 over
their words (`tinylm.rag.lexical`); "hybrid", the default, fuses the two rankings' top `CANDIDATES` by
reciprocal rank fusion with `weights` (dense, lexical). Dense vectors of documents written from one template
are all alike, while the words that decide (a name, a year) are what BM25 weighs; fusing keeps both.

`retrieve(db, question, k)` returns the top-k chunks as `Hit`s, best first. `context_for(db, question)` (or
the hook `retriever(db)`) is the one call a chat loop needs: the numbered sources as text. This module does
not generate; `tinylm.rag.answer` does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinylm.errors import DataError, TinylmError
from tinylm.rag import lexical
from tinylm.rag.db import RagDB, Settings
from tinylm.rag.embedders import load_embedder
from tinylm.rag.store import VectorStore, open_store

RETRIEVALS = ("dense", "lexical", "hybrid")
DEFAULT_RETRIEVAL = "hybrid"
DEFAULT_WEIGHTS = (0.5, 1.0)
"""Hybrid retrieval's weights of the dense and the lexical ranking in the fusion: the words a question
shares with a chunk count twice as much as its embedding's neighbours (BENCHMARKS.md, issue #19)."""
CANDIDATES = 50
"""How deep hybrid retrieval reads each ranking before fusing them (at least k)."""

INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Cite each source you use by its number "
    "in square brackets, as [1] or [2]. If the sources do not contain the answer, say that you do not know."
)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk; `rank` (1-based) is also its citation number."""

    rank: int
    score: float
    path: str
    section: str
    position: int
    start: int
    end: int
    text: str
    chunk_id: int

    @property
    def label(self) -> str:
        """Where the chunk comes from, e.g. `docs/guide.pdf (page 2, chunk 3)`."""
        where = f"{self.section}, " if self.section else ""
        return f"{_shown(self.path)} ({where}chunk {self.position})"


def retrieve(
    db: str | Path,
    question: str,
    k: int = 4,
    *,
    retrieval: str = DEFAULT_RETRIEVAL,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> list[Hit]:
    """The `k` chunks of the database `db` best matching `question`, best first: by cosine similarity
    ("dense"), BM25 ("lexical") or both fused ("hybrid"; `weights` of dense and lexical)."""
    return retrieve_many(db, [question], k, retrieval=retrieval, weights=weights)[0]


def retrieve_many(
    db: str | Path,
    questions: Sequence[str],
    k: int,
    *,
    retrieval: str = DEFAULT_RETRIEVAL,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> list[list[Hit]]:
    """`retrieve` for many questions, embedded in one batch."""
    check_k(k)
    check_retrieval(retrieval, weights)
    with RagDB.open(db) as rag:
        settings = built_with(rag)
        dense = retrieval != "lexical"
        queries = _embed(rag, settings, questions) if dense else [None] * len(questions)  # (Q, dim)
        store = open_store(rag, settings) if dense else None
        try:
            with rag.errors():
                ranks = [ranked(rag, store, q, v, k, retrieval, weights) for q, v in zip(questions, queries)]
            return [as_hits(rag, pairs) for pairs in ranks]
        finally:
            if store is not None:
                store.close()


def ranked(
    rag: RagDB,
    store: VectorStore | None,
    question: str,
    query: np.ndarray | None,
    k: int,
    retrieval: str,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> list[tuple[int, float]]:
    """The top `k` (chunk id, score) pairs for one question, its text and its unit vector `query` (dim,)
    (None and no store for "lexical"); scores are cosines, BM25 scores or fused RRF scores."""
    if retrieval == "lexical":
        return lexical.search(rag.conn, question, k)
    assert store is not None and query is not None, "dense and hybrid retrieval need the vectors"
    if retrieval == "dense":
        return store.search(query, k)
    depth = max(k, CANDIDATES)
    return lexical.fuse([store.search(query, depth), lexical.search(rag.conn, question, depth)], weights, k)


def _embed(rag: RagDB, settings: Settings, questions: Sequence[str]) -> np.ndarray:
    """The questions as unit vectors (Q, dim), by the embedder the database was built with."""
    model = load_embedder(settings.embedder)
    if model.dim != settings.dim:
        raise DataError(
            f"{rag.path}: built with {settings.embedder!r} vectors of dimension {settings.dim}, but that "
            f"embedder now gives dimension {model.dim}; rebuild the database"
        )
    return model.embed(list(questions))


def as_hits(rag: RagDB, pairs: Sequence[tuple[int, float]]) -> list[Hit]:
    """The ranked (chunk id, score) pairs as Hits; a stray Qdrant point (no such chunk) is skipped."""
    rows = rag.chunks([i for i, _ in pairs])
    found = [(rows[i], score) for i, score in pairs if i in rows]
    return [
        Hit(rank, score, c.path, c.section, c.position, c.start, c.end, c.text, c.id)
        for rank, (c, score) in enumerate(found, 1)
    ]


def check_k(k: int) -> int:
    """`k` if it is a whole number of chunks >= 1; else a TinylmError naming --k."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise TinylmError(f"--k: expected a whole number of chunks >= 1, found {k!r}")
    return k


def check_retrieval(retrieval: str, weights: Sequence[float] = DEFAULT_WEIGHTS) -> str:
    """`retrieval` if it is one of RETRIEVALS and `weights` two numbers >= 0, not both 0; else a
    TinylmError naming --retrieval or --weights."""
    problems = []
    if retrieval not in RETRIEVALS:
        problems.append(f"--retrieval: expected one of {', '.join(RETRIEVALS)}, found {retrieval!r}")
    numbers = len(weights) == 2 and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights
    )
    if not numbers or not any(weights):
        problems.append(
            f"--weights: expected two numbers >= 0 (dense, lexical), not both 0, found {weights!r}"
        )
    if problems:
        raise TinylmError("; ".join(problems))
    return retrieval


def built_with(rag: RagDB) -> Settings:
    """The settings the open database was built with; a DataError when it holds no documents yet."""
    settings = rag.settings()
    if settings is None:
        raise DataError(f"{rag.path}: the database holds no documents yet; add some with `tinylm rag index`")
    return settings


def format_sources(hits: Sequence[Hit]) -> str:
    """The hits as numbered sources: `[1] path (chunk 0)` then the chunk's text, a blank line between."""
    return "\n\n".join(f"[{h.rank}] {h.label}\n{h.text}" for h in hits)


def format_context(hits: Sequence[Hit]) -> str:
    """The instructions and the numbered sources: the text a model answers from."""
    return f"{INSTRUCTIONS}\n\nSources:\n{format_sources(hits)}"


def context_for(db: str | Path, question: str, k: int = 4, *, retrieval: str = DEFAULT_RETRIEVAL) -> str:
    """The `k` chunks best matching `question` as numbered sources (`format_sources`); "" when there are none.

    Only the sources: the caller puts them into its own prompt (e.g. after `INSTRUCTIONS`).
    """
    return format_sources(retrieve(db, question, k, retrieval=retrieval))


def retriever(db: str | Path, k: int = 4, *, retrieval: str = DEFAULT_RETRIEVAL) -> Callable[[str], str]:
    """`question -> context_for(db, question, k)`: the retrieval hook of `tinylm chat --rag DB`.

    The database is checked now (it exists, is a tinylm RAG database with its lexical index, holds
    documents), so a chat started with a bad one stops before its first question rather than at it.
    """
    check_k(k)
    check_retrieval(retrieval)
    with RagDB.open(db) as rag:
        built_with(rag)
    return functools.partial(context_for, db, k=k, retrieval=retrieval)


def _shown(path: str) -> str:
    """A path relative to the working folder when it lies inside it, else as stored (absolute)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
