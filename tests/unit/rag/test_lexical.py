"""Tests for the lexical index and hybrid retrieval (issue #19): FTS5 kept in step with the chunks and vectors
through re-indexing, removal, refused embedders, an exception between writes and a killed indexer; the
upgrade of a database made before the index; the three retrieval modes; rank fusion by hand; and the
template benchmark of bench/rag_hybrid.py (hybrid hit rate@5 >= 0.9, MRR >= 0.8).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.rag.corpus import tiny_checkpoint, write_corpus
from tinylm.chat.session import rag_retriever
from tinylm.errors import ConfigError, DataError, TinylmError
from tinylm.rag import compare, index, retrieve, retriever, upgrade
from tinylm.rag.db import RagDB
from tinylm.rag.lexical import RRF_K, SCHEMA, fuse, query_terms, search, weighed_terms
from tinylm.rag.store import SqliteVectors

ROOT = Path(__file__).resolve().parents[3]


def _ids(db: Path, sql: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(sql)]


def assert_in_step(db: Path) -> None:
    """The chunks, the vectors and the lexical index hold the same chunk ids, and FTS5 finds its index
    consistent with the chunk texts."""
    chunks = _ids(db, "SELECT id FROM chunks ORDER BY id")
    assert _ids(db, "SELECT chunk_id FROM vectors ORDER BY chunk_id") == chunks
    assert _ids(db, "SELECT rowid FROM chunks_fts ORDER BY rowid") == chunks
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        words = conn.execute("SELECT COUNT(*) FROM chunks_fts_docsize").fetchone()[0]
    assert words == len(chunks)


def test_query_terms_are_quoted_words_without_stop_words_and_common_ones_weigh_nothing():
    terms = query_terms('Which "river" (Arden) AND NOT the: festival* river?')
    assert terms == ['"river"', '"arden"', '"not"', '"festival"']
    assert query_terms("the of ?!") == []
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    for statement in SCHEMA:
        conn.execute(statement)
    texts = ["a town on the river Arden", "a town on the river Lune", "a town by the sea", "a town"]
    conn.executemany("INSERT INTO chunks (text) VALUES (?)", [(t,) for t in texts])
    assert weighed_terms(conn, ['"town"', '"river"', '"arden"']) == ['"arden"']  # in 4, 2 and 1 of 4 chunks
    assert weighed_terms(conn, ['"town"', '"river"']) == ['"town"', '"river"']  # none left: all kept
    assert [i for i, _ in search(conn, "Which town on the river Arden?", 5)] == [1]
    assert [i for i, _ in search(conn, "Which town by the river?", 5)][:2] == [1, 2]


def test_fuse_adds_weighted_reciprocal_ranks():
    dense, lexical = [(1, 0.9), (2, 0.8)], [(2, 7.0), (3, 5.0)]
    fused = fuse([dense, lexical], [0.5, 1.0], k=3)
    assert [i for i, _ in fused] == [2, 3, 1]
    assert fused[0][1] == pytest.approx(0.5 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert fuse([dense, lexical], [1.0, 1.0], k=1) == [(2, pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1)))]


def test_the_three_modes_and_their_checks(tmp_path):
    db = tmp_path / "rag.db"
    index([write_corpus(tmp_path / "docs")], db)
    question = "Which volcano is on Sicily?"
    for mode, ranks in (("dense", [1, 2]), ("lexical", [1]), ("hybrid", [1, 2])):  # one chunk has its words
        hits = retrieve(db, question, k=2, retrieval=mode)
        assert hits[0].path.endswith("volcano.html") and [h.rank for h in hits] == ranks, mode
    assert retrieve(db, "zzzz qqqq", k=3, retrieval="lexical") == []  # no word of it in any chunk
    assert retrieve(db, "the of", k=3, retrieval="lexical") == []  # only stop words
    assert retrieve(db, 'Sicily" OR NEAR(', k=1, retrieval="lexical")[0].path.endswith("volcano.html")
    with pytest.raises(
        TinylmError, match="--retrieval: expected one of dense, lexical, hybrid, found 'sparse'"
    ):
        retrieve(db, question, retrieval="sparse")
    with pytest.raises(TinylmError, match="--weights: expected two numbers >= 0"):
        retrieve(db, question, weights=(0.0, 0.0))
    with pytest.raises(TinylmError, match="--retrieval"):
        retriever(db, retrieval="bm25")
    assert "Sicily" in retriever(db, k=1, retrieval="lexical")(question)
    assert rag_retriever(db, "lexical")(question).startswith("[1] ")  # what `tinylm chat --rag` calls
    with pytest.raises(TinylmError, match="--retrieval"):
        rag_retriever(db, "sparse")


def test_reindex_removal_and_a_refused_embedder_keep_the_indexes_in_step(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    index([root], db)
    assert_in_step(db)
    (root / "cats.md").write_text("# Cats\n\nA cat named Quasimodo sleeps all afternoon.\n")
    (root / "notes.txt").unlink()
    report = index([root], db)
    assert (report.updated, report.removed) == (1, 1)
    assert_in_step(db)
    assert retrieve(db, "Quasimodo", k=1, retrieval="lexical")[0].path.endswith("cats.md")
    assert retrieve(db, "photosynthesis", k=3, retrieval="lexical") == []  # gone with notes.txt
    with pytest.raises(ConfigError, match="--embedder"):
        index([root], db, embedder=tiny_checkpoint(tmp_path / "tiny"))
    assert_in_step(db)


def test_an_exception_between_writes_leaves_both_indexes_as_they_were(tmp_path, monkeypatch):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    index([root], db)
    (root / "cats.md").write_text("# Cats\n\nA cat named Quasimodo sleeps all afternoon.\n")

    def fail(self, ids, vectors):  # after the chunks (and, by trigger, the lexical index) are written
        raise OSError("disk full")

    monkeypatch.setattr(SqliteVectors, "add", fail)
    with pytest.raises(OSError, match="disk full"):
        index([root], db)
    assert_in_step(db)
    assert retrieve(db, "Quasimodo", k=1, retrieval="lexical") == []
    assert retrieve(db, "purrs content", k=1, retrieval="lexical")[0].path.endswith("cats.md")


KILLED_INDEXER = """
import os, signal, sys
from tinylm.rag import index
from tinylm.rag.store import SqliteVectors
add = SqliteVectors.add
def add_then_die(self, ids, vectors):
    add(self, ids, vectors)
    if sys.argv[3] in self.conn.execute("SELECT text FROM chunks WHERE id = ?", (ids[0],)).fetchone()[0]:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-file: chunks, lexical index and vectors written, not committed
SqliteVectors.add = add_then_die
index([sys.argv[1]], sys.argv[2], embedder=sys.argv[4])
"""


def test_an_indexer_killed_mid_file_leaves_both_indexes_in_step(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    tiny = tiny_checkpoint(tmp_path / "tiny")
    index([root], db, embedder=tiny, chunk_size=32)
    before = _ids(db, "SELECT id FROM chunks ORDER BY id")
    (root / "cats.md").write_text("# Cats\n\nA cat named Quasimodo sleeps all afternoon.\n")
    (root / "new.txt").write_text("Zeppelins float on hydrogen or helium.\n")
    run = subprocess.run(
        [sys.executable, "-c", KILLED_INDEXER, str(root), str(db), "Quasimodo", str(tiny)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert_in_step(db)
    assert retrieve(db, "Quasimodo", k=1, retrieval="lexical") == []
    assert set(before) <= set(_ids(db, "SELECT id FROM chunks"))
    report = index([root], db)
    assert report.updated + report.added >= 1
    assert_in_step(db)
    assert retrieve(db, "Quasimodo", k=1, retrieval="lexical")[0].path.endswith("cats.md")


def _make_old(db: Path) -> None:
    """Turn a database into one made before the lexical index: no FTS5 table, no triggers."""
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "DROP TRIGGER chunks_fts_insert; DROP TRIGGER chunks_fts_delete; DROP TABLE chunks_fts;"
        )


def test_a_database_of_an_older_tinylm_is_refused_then_upgraded_in_place(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "rag.db"
    assert not any("older tinylm" in note for note in index([root], db).notes)  # new: nothing upgraded
    _make_old(db)
    for mode in ("dense", "lexical", "hybrid"):  # never answered from another index than the one asked for
        with pytest.raises(
            DataError, match=rf"rag\.db: made by an older tinylm.*tinylm rag upgrade --db {db}"
        ):
            retrieve(db, "Which volcano is on Sicily?", retrieval=mode)
    vectors = _ids(db, "SELECT chunk_id FROM vectors ORDER BY chunk_id")
    assert upgrade(db) is True and upgrade(db) is False
    assert_in_step(db)
    assert _ids(db, "SELECT chunk_id FROM vectors ORDER BY chunk_id") == vectors  # nothing re-embedded
    assert retrieve(db, "Sicily", k=1, retrieval="lexical")[0].path.endswith("volcano.html")
    _make_old(db)
    report = index([root], db)  # indexing upgrades it too, and says so
    assert report.skipped == 6 and any("added the lexical index" in note for note in report.notes)
    assert_in_step(db)
    with RagDB.open(db) as rag:
        assert not rag.upgraded


def _bench():
    spec = importlib.util.spec_from_file_location("rag_hybrid", ROOT / "bench" / "rag_hybrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_template_benchmark_questions_name_facts_of_one_town_alone(tmp_path):
    bench = _bench()
    folder, questions = bench.write_benchmark(tmp_path, 100, 50)
    texts = [p.read_text() for p in sorted(folder.iterdir())]
    records = [json.loads(line) for line in questions.read_text().splitlines()]
    assert len(texts) == 100 and len(records) == 50
    assert all(" is a town on the river " in t and ". Its main export is " in t for t in texts)
    towns = [p.stem for p in folder.iterdir()]
    assert not any(town in r["question"] for town in towns for r in records)  # a question names no town
    assert len({r["source"] for r in records}) == 50


@pytest.mark.slow
def test_hybrid_retrieval_meets_the_issue_on_the_template_benchmark(tmp_path):
    folder, questions = _bench().write_benchmark(tmp_path, 100, 50)
    index([folder], tmp_path / "rag.db")
    reports = compare(tmp_path / "rag.db", questions, k=5)
    hybrid = reports["hybrid"]
    assert hybrid.hit_rate >= 0.9 and hybrid.mrr >= 0.8, {m: (r.hit_rate, r.mrr) for m, r in reports.items()}
    assert hybrid.mrr > reports["dense"].mrr
    assert hybrid.recall == hybrid.hit_rate  # one chunk per town


def test_the_qdrant_backend_keeps_its_lexical_index_in_the_sqlite_file(tmp_path):
    root = write_corpus(tmp_path / "docs")
    db = tmp_path / "q.db"
    index([root], db, backend="qdrant")
    (root / "notes.txt").unlink()
    assert index([root], db).removed == 1
    chunks = _ids(db, "SELECT id FROM chunks ORDER BY id")
    assert _ids(db, "SELECT rowid FROM chunks_fts ORDER BY rowid") == chunks
    assert retrieve(db, "Sicily", k=1, retrieval="lexical")[0].path.endswith("volcano.html")
    hybrid = retrieve(db, "Which volcano is on Sicily?", k=3)
    assert hybrid[0].path.endswith("volcano.html") and len(hybrid) == 3
