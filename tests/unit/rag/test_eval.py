"""Tests for tinylm.rag.evaluation: metrics by hand, source matching, bad question files, and MiniLM
ranking obvious questions first on the test corpus."""

from __future__ import annotations

import json

import pytest

from tests.unit.rag.corpus import QUESTIONS, write_corpus, write_questions
from tinylm.errors import DataError
from tinylm.rag import evaluate, index
from tinylm.rag.evaluation import first_rank, hit_rate, mean_reciprocal_rank, names_document, read_questions
from tinylm.rag.retrieval import Hit


def _hit(rank: int, path: str) -> Hit:
    return Hit(rank, 1.0 / rank, path, "", 0, 0, 1, "text", rank)


def test_metrics_by_hand():
    ranks = [1, None, 2, 3]
    assert hit_rate(ranks) == 0.75
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 0 + 1 / 2 + 1 / 3) / 4)
    assert hit_rate([None]) == 0.0 and mean_reciprocal_rank([None, None]) == 0.0


def test_a_source_names_a_document_by_its_whole_path_or_a_tail_of_it():
    path = "/data/docs/sub/moon.txt"
    assert all(names_document(s, path) for s in ["moon.txt", "sub/moon.txt", "./sub/moon.txt", path])
    assert not any(names_document(s, path) for s in ["oon.txt", "docs/moon.txt", "moon", ""])
    hits = [_hit(1, "/d/cats.md"), _hit(2, "/d/moon.txt"), _hit(3, "/d/moon.txt")]
    assert first_rank(hits, "moon.txt") == 2
    assert first_rank(hits, "cats.md") == 1
    assert first_rank(hits, "notes.txt") is None


def test_bad_question_files_name_the_line_and_key(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(
        json.dumps({"question": "a?", "source": "a.md"}) + "\n" + json.dumps({"question": "b?"}) + "\n"
    )
    with pytest.raises(DataError, match=r"q\.jsonl: line 2: missing key 'source'"):
        read_questions(bad)
    bad.write_text(json.dumps({"question": 3, "source": "a.md"}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl: line 1: key 'question': expected a string, found int 3"):
        read_questions(bad)
    with pytest.raises(DataError, match=r"q\.json: expected a \.jsonl file"):
        read_questions(tmp_path / "q.json")


def test_minilm_ranks_obvious_questions_first(tmp_path):
    db = tmp_path / "rag.db"
    index([write_corpus(tmp_path / "docs")], db)
    questions = write_questions(tmp_path / "q.jsonl")
    at1 = evaluate(db, questions, k=1)
    assert at1.ranks == [1] * len(QUESTIONS) and at1.hit_rate == 1.0 and at1.mrr == 1.0
    at3 = evaluate(db, questions, k=3)
    assert at3.mrr == pytest.approx(mean_reciprocal_rank(at3.ranks)) and at3.hit_rate == 1.0
    data = at3.as_dict()
    assert (data["k"], data["questions"], data["hit_rate@3"]) == (3, len(QUESTIONS), 1.0)
    assert [r["source"] for r in data["results"]] == [s for _, s in QUESTIONS]


def test_a_source_that_names_no_document_is_an_error(tmp_path):
    db = tmp_path / "rag.db"
    index([write_corpus(tmp_path / "docs") / "cats.md"], db)
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "cats?", "source": "cats.md"})
        + "\n"
        + json.dumps({"question": "dogs?", "source": "dogs.md"})
        + "\n"
    )
    with pytest.raises(
        DataError, match=r"q\.jsonl: line 2: key 'source': 'dogs\.md' names no indexed document"
    ):
        evaluate(db, questions, k=2)
