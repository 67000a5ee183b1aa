"""Retrieval: the chunks nearest a question, and the numbered-sources context a model answers from.

`retrieve(db, question, k)` embeds the question with the embedder the database was built with (loaded once
per process) and returns the top-k chunks by cosine similarity as `Hit`s, best first. `context_for(db,
question)` (or the hook `retriever(db)`) is the one call a chat loop needs: the numbered sources as text.
This module does not generate; `tinylm.rag.answer` does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tinylm.errors import DataError, TinylmError
from tinylm.rag.db import RagDB, Settings
from tinylm.rag.embedders import load_embedder
from tinylm.rag.store import open_store

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


def retrieve(db: str | Path, question: str, k: int = 4) -> list[Hit]:
    """The `k` chunks of the database `db` nearest `question` by cosine similarity, best first."""
    return retrieve_many(db, [question], k)[0]


def retrieve_many(db: str | Path, questions: Sequence[str], k: int) -> list[list[Hit]]:
    """`retrieve` for many questions, embedded in one batch."""
    check_k(k)
    with RagDB.open(db) as rag:
        settings = built_with(rag)
        model = load_embedder(settings.embedder)
        if model.dim != settings.dim:
            raise DataError(
                f"{rag.path}: built with {settings.embedder!r} vectors of dimension {settings.dim}, but that "
                f"embedder now gives dimension {model.dim}; rebuild the database"
            )
        queries = model.embed(list(questions))  # (Q, dim)
        store = open_store(rag, settings)
        try:
            results = []
            for query in queries:
                pairs = store.search(query, k)
                rows = rag.chunks([i for i, _ in pairs])
                found = [
                    (rows[i], score) for i, score in pairs if i in rows
                ]  # a stray Qdrant point is skipped
                results.append(
                    [
                        Hit(rank, score, c.path, c.section, c.position, c.start, c.end, c.text, c.id)
                        for rank, (c, score) in enumerate(found, 1)
                    ]
                )
        finally:
            store.close()
    return results


def check_k(k: int) -> int:
    """`k` if it is a whole number of chunks >= 1; else a TinylmError naming --k."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise TinylmError(f"--k: expected a whole number of chunks >= 1, found {k!r}")
    return k


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


def context_for(db: str | Path, question: str, k: int = 4) -> str:
    """The `k` chunks nearest `question` as numbered sources (`format_sources`); "" when there are none.

    Only the sources: the caller puts them into its own prompt (e.g. after `INSTRUCTIONS`).
    """
    return format_sources(retrieve(db, question, k))


def retriever(db: str | Path, k: int = 4) -> Callable[[str], str]:
    """`question -> context_for(db, question, k)`: the retrieval hook of `tinylm chat --rag DB`.

    The database is checked now (it exists, is a tinylm RAG database, holds documents), so a chat started
    with a bad one stops before its first question rather than at it.
    """
    check_k(k)
    with RagDB.open(db) as rag:
        built_with(rag)
    return functools.partial(context_for, db, k=k)


def _shown(path: str) -> str:
    """A path relative to the working folder when it lies inside it, else as stored (absolute)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
