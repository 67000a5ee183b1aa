"""Vector stores: where chunk vectors live and how the nearest ones are found, behind one `VectorStore` seam.

- `SqliteVectors`: float32 blobs in the database's own `vectors` table, written in the same transaction as
  the chunks; search is one matrix product over every stored vector (exact, fine up to ~10^5 chunks).
- `QdrantVectors` (`tinylm.rag.qdrant`): a Qdrant collection, on a server (`--url`) or in local mode.

Vectors are unit length, so the dot product is the cosine similarity. Either way the documents and chunks
stay in SQLite (`tinylm.rag.db`); a store knows only chunk ids and vectors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tinylm.rag.db import RagDB, Settings

BACKENDS = ("sqlite", "qdrant")


class VectorStore(Protocol):
    """Vectors keyed by chunk id."""

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store `vectors` (N, dim) under `ids` (N)."""
        ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The `k` (id, cosine similarity) pairs nearest the unit vector `query` (dim,), best first."""
        ...

    def close(self) -> None: ...


class SqliteVectors:
    """Vectors as little-endian float32 blobs in the `vectors` table of an open database."""

    def __init__(self, conn: sqlite3.Connection, dim: int):
        self.conn = conn
        self.dim = dim

    def add(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(ids), self.dim), (
            f"expected ({len(ids)}, {self.dim}), got {vectors.shape}"
        )
        rows = [(int(i), v.astype("<f4").tobytes()) for i, v in zip(ids, vectors)]
        self.conn.executemany("INSERT OR REPLACE INTO vectors (chunk_id, vector) VALUES (?, ?)", rows)

    def delete(self, ids: Sequence[int]) -> None:
        self.conn.executemany("DELETE FROM vectors WHERE chunk_id = ?", [(int(i),) for i in ids])

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector: ids (N,) and the matrix (N, dim)."""
        rows = self.conn.execute("SELECT chunk_id, vector FROM vectors ORDER BY chunk_id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), self.dim)
        return ids, matrix

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        ids, matrix = self.matrix()
        scores = matrix @ query.astype(np.float32)  # (N,)
        best = np.argsort(-scores, kind="stable")[:k]
        return [(int(ids[i]), float(scores[i])) for i in best]

    def close(self) -> None:
        """Nothing to do: the database owns the connection."""


def qdrant_path(db_path: Path) -> Path:
    """Where Qdrant's local mode keeps a database's collection: the folder `<db>.qdrant` beside it."""
    return db_path.with_name(db_path.name + ".qdrant")


def open_store(db: RagDB, settings: Settings) -> VectorStore:
    """The vector store a database was built with."""
    if settings.backend == "sqlite":
        return SqliteVectors(db.conn, settings.dim)
    assert settings.backend == "qdrant", f"unknown backend {settings.backend!r}"
    from tinylm.rag.qdrant import QdrantVectors

    if settings.url:
        return QdrantVectors(settings.collection, settings.dim, url=settings.url)
    return QdrantVectors(settings.collection, settings.dim, path=qdrant_path(db.path))
