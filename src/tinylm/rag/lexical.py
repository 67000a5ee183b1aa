"""The lexical index: SQLite FTS5 over the chunk texts, ranked by BM25, and reciprocal rank fusion.

The FTS5 table `chunks_fts` is an external-content index of `chunks.text` in the same database file, kept
in step by triggers on `chunks`: a chunk inserted or deleted (a document's cascade included) changes the
index in the same transaction, so the lexical index and the chunks (and the sqlite backend's vectors)
cannot disagree, whatever stops an indexing run. Words are lower-cased, stripped of diacritics and Porter
stemmed, so "celebrates" finds "celebrated". The index does not depend on the embedder or vector backend;
a Qdrant database keeps its lexical index here too.

A database made before the lexical index existed has no `chunks_fts`; `ensure_index` adds and fills it (one
transaction) when the file is opened to write. This module knows nothing of embedders or vector stores.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

TABLE = "chunks_fts"
SCHEMA = (
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(text, content='chunks', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN "
    f"INSERT INTO {TABLE}(rowid, text) VALUES (new.id, new.text); END",
    f"CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN "
    f"INSERT INTO {TABLE}({TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END",
)
"""The index and the triggers that keep it in step with `chunks`, one statement each."""
RRF_K = 5
"""The constant of reciprocal rank fusion: a chunk at rank r of a ranking scores weight / (RRF_K + r). The
usual 60 flattens the top ranks so much that a chunk first by BM25 loses to one second by BM25 and first by
a dense ranking that cannot tell template-written documents apart; 5 keeps a clear first place first
(BENCHMARKS.md, issue #19)."""
_STOP = (
    "a an and are as at be by did do does for from how in is it its of on or that the their there this to "
    "was were what when where which who whom why with"
)
STOPWORDS = frozenset(_STOP.split())
"""Words left out of a query: they match nearly every chunk, add little to BM25 and slow the search."""


def has_index(conn: sqlite3.Connection) -> bool:
    """Whether the database has its lexical index (databases of tinylm before it do not)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone()
    return row is not None


def ensure_index(conn: sqlite3.Connection) -> bool:
    """Add the lexical index and its triggers to a database without them, filled from the stored chunks,
    in one transaction; True when it was added, False when it was there already."""
    if has_index(conn):
        return False
    with conn:  # sqlite3 opens no transaction before DDL: the table, triggers and fill land together
        conn.execute("BEGIN")
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
    return True


def query_terms(text: str) -> list[str]:
    """The words of `text`, lower-cased, stop words left out, each once and quoted as an FTS5 string so
    that no character of the question is read as FTS5 syntax."""
    return [f'"{w}"' for w in dict.fromkeys(re.findall(r"\w+", text.lower())) if w not in STOPWORDS]


def weighed_terms(conn: sqlite3.Connection, terms: Sequence[str]) -> list[str]:
    """The terms that carry weight in BM25. FTS5 gives a term found in half the chunks or more an IDF of
    1e-6, so it changes no ranking, yet BM25 would score every chunk holding it (a whole index, for "town"
    in documents about towns); it is left out, unless no term is left."""
    if len(terms) < 2:
        return list(terms)
    total = conn.execute(f"SELECT COUNT(*) FROM {TABLE}_docsize").fetchone()[0]
    count = f"SELECT COUNT(*) FROM {TABLE} WHERE {TABLE} MATCH ?"
    kept = [t for t in terms if 2 * conn.execute(count, (t,)).fetchone()[0] < total]
    return kept or list(terms)


def search(conn: sqlite3.Connection, text: str, k: int) -> list[tuple[int, float]]:
    """The `k` (chunk id, BM25 score) pairs best matching the words of `text`, best first (higher is better);
    chunks sharing no weighed word with it are not returned."""
    terms = weighed_terms(conn, query_terms(text))
    if not terms:
        return []
    rows = conn.execute(
        f"SELECT rowid, bm25({TABLE}) AS s FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY s LIMIT ?",
        (" OR ".join(terms), k),
    ).fetchall()
    return [(int(i), -float(s)) for i, s in rows]  # FTS5's bm25() is lower for better matches


def fuse(
    rankings: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float], k: int
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: the `k` ids with the highest sum over rankings of weight / (RRF_K + rank),
    with that sum as their score; ties keep the order in which the ids were first met."""
    assert len(rankings) == len(weights), f"{len(rankings)} rankings for {len(weights)} weights"
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, (i, _) in enumerate(ranking, 1):
            scores[i] = scores.get(i, 0.0) + weight / (RRF_K + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])[:k]
