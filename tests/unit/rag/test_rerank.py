"""Tests for tinylm.rag.rerank with tiny random checkpoints (a character tokenizer: a token per character):
the query-likelihood score against a direct computation and the order it gives, the cap and the context
window, and `rerank` through `ask`, `evaluate` and `tinylm rag ask / eval` (0 changes nothing)."""

from __future__ import annotations

import json

import pytest
import torch

import tinylm.rag.answer
import tinylm.rag.evaluation
from tests.unit.rag.corpus import QUESTIONS, tiny_checkpoint, write_corpus, write_questions
from tinylm import load
from tinylm.cli import main
from tinylm.errors import TinylmError
from tinylm.rag import ask, evaluate, index, rerank_hits, retrieve
from tinylm.rag.evaluation import first_rank
from tinylm.rag.rerank import MAX_CANDIDATES, check_rerank, query_likelihoods
from tinylm.rag.retrieval import Hit

QUESTION = "Which volcano is on Sicily?"
PASSAGES = [
    "Mount Etna, on the island of Sicily, is the most active volcano in Europe.",
    "Domestic cats sleep for twelve to sixteen hours a day.",
    "Bicycle care: pump road bike tyres to about seven bar before every ride.",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny", block_size=256))


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "rag.db"
    index([write_corpus(tmp_path / "docs")], path)
    return path


def direct(lm, passage: str, question: str) -> float:
    """The mean log-probability of ` question` after `Passage: passage\\nQuestion:`: the whole text through
    the model alone, unpadded, one position at a time."""
    asked = f" {question}"
    ids = lm.tokenizer.encode(f"Passage: {passage}\nQuestion:{asked}")
    logp = torch.log_softmax(lm.model(torch.tensor([ids]))[0].float(), dim=-1)  # (T, vocab)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - len(asked), len(ids))) / len(asked)


def test_scores_are_the_mean_log_likelihood_of_the_question_and_order_the_hits(lm):
    expected = [direct(lm, p, QUESTION) for p in PASSAGES]
    assert query_likelihoods(lm, QUESTION, PASSAGES) == pytest.approx(expected, abs=1e-4)
    worst_first = sorted(range(len(PASSAGES)), key=lambda i: expected[i])
    hits = [
        Hit(rank, 1.0 / rank, f"/d/{i}.txt", "", 0, 0, 9, PASSAGES[i], 10 + i)
        for rank, i in enumerate(worst_first, 1)
    ]
    reranked = rerank_hits(lm, QUESTION, hits)
    assert [h.chunk_id for h in reranked] == [10 + i for i in reversed(worst_first)]
    assert [h.rank for h in reranked] == [1, 2, 3]
    assert [h.score for h in reranked] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
    assert rerank_hits(lm, QUESTION, []) == []


def test_the_context_window_keeps_the_passage_start_and_the_question(tmp_path, monkeypatch):
    small = load(tiny_checkpoint(tmp_path / "small", block_size=64))
    passage, question = "Mount Etna is a volcano. " * 20, "Which volcano is on Sicily? " * 4
    widths = []
    forward = small.model.forward
    monkeypatch.setattr(small.model, "forward", lambda idx, **kw: widths.append(idx.shape[1]) or forward(idx))
    scores = query_likelihoods(small, QUESTION, [passage, "Etna."])
    assert max(widths) == 64
    room = 64 - len("Passage:") - len("\nQuestion:") - len(f" {QUESTION}")
    expected = [direct(small, passage[: room - 1], QUESTION), direct(small, "Etna.", QUESTION)]
    assert scores == pytest.approx(expected, abs=1e-4)
    long = query_likelihoods(
        small, question, [passage]
    )  # the question keeps its first half-window: 32 tokens
    expected = [direct(small, passage[: 64 - 18 - 32 - 1], question.strip()[:31])]
    assert long == pytest.approx(expected, abs=1e-4)
    tiny = load(tiny_checkpoint(tmp_path / "tiny", block_size=16))
    with pytest.raises(TinylmError, match="16-token context window cannot hold the reranking prompt"):
        query_likelihoods(tiny, QUESTION, [passage])


def test_the_number_of_candidates_is_capped_before_any_forward_pass(lm, monkeypatch):
    monkeypatch.setattr(lm.model, "forward", lambda *a, **kw: pytest.fail("ran the model"))
    with pytest.raises(TinylmError, match=f"--rerank: at most {MAX_CANDIDATES} candidates per question"):
        query_likelihoods(lm, QUESTION, ["Etna."] * (MAX_CANDIDATES + 1))
    assert check_rerank(0, 4) == 0 and check_rerank(4, 4) == 4 and check_rerank(MAX_CANDIDATES, 4) == 100
    for bad in (-1, 3, MAX_CANDIDATES + 1, True, 2.5):
        with pytest.raises(TinylmError, match=r"--rerank: expected 0 \(off\) or how many top candidates"):
            check_rerank(bad, 4)


def test_rerank_through_ask_and_evaluate(db, lm, tmp_path):
    question = "How long should bread dough be kneaded?"
    given = ask(db, question, lm, k=2, rerank=4, max_new_tokens=2)
    assert given.sources == rerank_hits(lm, question, retrieve(db, question, 4))[:2]
    assert [h.rank for h in given.sources] == [1, 2] and f"[1] {given.sources[0].label}" in given.prompt
    report = evaluate(db, write_questions(tmp_path / "q.jsonl"), k=2, rerank=4, model=lm)
    expected = [first_rank(rerank_hits(lm, q, retrieve(db, q, 4))[:2], source) for q, source in QUESTIONS]
    assert report.ranks == expected and report.rerank == 4 and report.as_dict()["rerank"] == 4
    with pytest.raises(TinylmError, match="--rerank needs --model MODEL"):
        evaluate(db, tmp_path / "q.jsonl", k=2, rerank=4)


def test_rerank_zero_changes_nothing(db, lm, tmp_path, monkeypatch):
    for module in (tinylm.rag.answer, tinylm.rag.evaluation):
        monkeypatch.setattr(module, "rerank_hits", lambda *a: pytest.fail("reranked with rerank=0"))
    question = "Which volcano is on Sicily?"
    assert ask(db, question, lm, k=2, rerank=0, max_new_tokens=2).sources == retrieve(db, question, 2)
    questions = write_questions(tmp_path / "q.jsonl")
    plain = evaluate(db, questions, k=2)
    assert evaluate(db, questions, k=2, rerank=0, model=lm).as_dict() == plain.as_dict()


def test_cli_rerank_flags(db, tmp_path, capsys):
    questions = str(write_questions(tmp_path / "q.jsonl"))
    model = str(tiny_checkpoint(tmp_path / "tiny", block_size=256))
    base = ["rag", "eval", questions, "--db", str(db), "--k", "2"]
    for args, needle in [
        (["--rerank", "3"], "error: --rerank needs --model MODEL"),
        (["--model", model], "error: --model: `rag eval` uses a model only to rerank"),
        (["--rerank", "1", "--model", model], "error: --rerank: expected 0 (off) or how many top candidates"),
    ]:
        assert main([*base, *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert main([*base, "--rerank", "3", "--model", model, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["k"], data["rerank"], len(data["results"])) == (2, 3, len(QUESTIONS))
    ask_args = ["rag", "ask", QUESTION, "--db", str(db), "--model", model, "--k", "1", "--rerank", "2"]
    assert main([*ask_args, "--max-new-tokens", "2"]) == 0
    assert len(capsys.readouterr().out.rsplit("\nSources:\n", 1)[1].strip().splitlines()) == 1
