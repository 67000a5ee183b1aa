"""Retrieval quality on labelled questions: hit rate@k, mean reciprocal rank (MRR) and recall@k, for one
retrieval mode (`evaluate`) or each of them side by side (`compare`).

The questions file is JSONL, one `{"question": ..., "source": ...}` per line, `source` naming the document
that answers it: a file name (`cats.md`), a tail of its path (`notes/cats.md`) or its full path. A question
is a hit when a chunk of that document is among its top k; its reciprocal rank is 1/rank of the first such
chunk (0 when none is); its recall is the fraction of that document's chunks among its top k. A source
that names no indexed document is an error, not a miss. With `rerank` N, each question's top N chunks are
reranked by a model's likelihood of the question (`tinylm.rag.rerank`) before the top k are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinylm.api import LM, load
from tinylm.data.formats import as_object, jsonl_records, string_field
from tinylm.errors import DataError, TinylmError
from tinylm.rag.db import RagDB
from tinylm.rag.rerank import check_rerank, rerank_hits
from tinylm.rag.retrieval import (
    DEFAULT_RETRIEVAL,
    DEFAULT_WEIGHTS,
    RETRIEVALS,
    Hit,
    check_k,
    check_retrieval,
    retrieve_many,
)


@dataclass(frozen=True)
class Question:
    question: str
    source: str
    where: str
    """Its line in the questions file, for messages."""


@dataclass
class EvalReport:
    k: int
    hit_rate: float
    mrr: float
    questions: list[Question]
    ranks: list[int | None] = field(default_factory=list)
    """Per question, the rank of the first chunk of its source, or None when it is not in the top k."""
    recall: float = 0.0
    """The mean over questions of the fraction of their source's chunks among the top k."""
    retrieval: str = DEFAULT_RETRIEVAL
    rerank: int = 0
    """How many top candidates a model reranked before the top k were kept (0: none)."""

    def as_dict(self) -> dict:
        return {
            "k": self.k,
            "retrieval": self.retrieval,
            "rerank": self.rerank,
            "questions": len(self.questions),
            f"hit_rate@{self.k}": self.hit_rate,
            "mrr": self.mrr,
            f"recall@{self.k}": self.recall,
            "results": [
                {"question": q.question, "source": q.source, "rank": r}
                for q, r in zip(self.questions, self.ranks)
            ],
        }


def read_questions(path: str | Path) -> list[Question]:
    """The labelled questions of a JSONL file; every record needs string keys `question` and `source`."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(f"{path}: expected a .jsonl file of {{'question': ..., 'source': ...}} lines")
    questions = []
    for where, record in jsonl_records(path):
        record = as_object(path, where, record)
        text = string_field(path, where, record, "question")
        questions.append(Question(text, string_field(path, where, record, "source"), where))
    if not questions:
        raise DataError(f"{path}: no questions (empty file)")
    return questions


def names_document(source: str, path: str) -> bool:
    """Whether `source` names the document at `path`: the same path, or a tail of it (`b/c.md` of `/a/b/c.md`)."""
    tail = Path(source).parts
    return bool(tail) and Path(path).parts[-len(tail) :] == tail


def first_rank(hits: Sequence[Hit], source: str) -> int | None:
    """The rank of the first hit from the document `source` names, or None."""
    return next((h.rank for h in hits if names_document(source, h.path)), None)


def hit_rate(ranks: Sequence[int | None]) -> float:
    """The fraction of questions whose source is among the retrieved chunks."""
    return sum(r is not None for r in ranks) / len(ranks)


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """The mean of 1/rank, counting a miss as 0."""
    return sum(1 / r for r in ranks if r is not None) / len(ranks)


def recall(hits: Sequence[Hit], source: str, counts: dict[str, int]) -> float:
    """The fraction of the chunks of the document(s) `source` names (`counts`: chunks by path) among `hits`."""
    total = sum(n for path, n in counts.items() if names_document(source, path))
    return sum(names_document(source, h.path) for h in hits) / total if total else 0.0


def evaluate(
    db: str | Path,
    questions_path: str | Path,
    k: int = 5,
    *,
    retrieval: str = DEFAULT_RETRIEVAL,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    rerank: int = 0,
    model: str | Path | LM | None = None,
) -> EvalReport:
    """Retrieve the top `k` chunks for every question of `questions_path` and score them; with `rerank` N,
    the top N reranked by `model`'s likelihood of the question first (see `compare`)."""
    reports = compare(
        db, questions_path, k, retrievals=[retrieval], weights=weights, rerank=rerank, model=model
    )
    return reports[retrieval]


def compare(
    db: str | Path,
    questions_path: str | Path,
    k: int = 5,
    *,
    retrievals: Sequence[str] = RETRIEVALS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    rerank: int = 0,
    model: str | Path | LM | None = None,
) -> dict[str, EvalReport]:
    """`evaluate` for each retrieval mode of `retrievals`, on the same questions: a report per mode.

    `rerank` N (0: off, else from k to 100) reranks each question's top N chunks by the likelihood `model`
    (a name, a path or a loaded LM; needed then, unused otherwise) gives the question after each."""
    check_rerank(rerank, check_k(k))
    if rerank and model is None:
        raise TinylmError("--rerank needs --model MODEL: the model whose likelihood of the question reranks")
    for retrieval in retrievals:
        check_retrieval(retrieval, weights)
    questions = read_questions(questions_path)
    with RagDB.open(db) as rag:
        counts = rag.chunk_counts()
    for q in questions:
        if not any(names_document(q.source, p) for p in counts):
            raise DataError(
                f"{questions_path}: {q.where}: key 'source': {q.source!r} names no indexed document "
                f"(the database holds {len(counts)}, e.g. {[Path(p).name for p in list(counts)[:5]]})"
            )
    lm = (model if isinstance(model, LM) else load(model)) if rerank else None  # loaded once, for every mode
    texts = [q.question for q in questions]
    reports = {}
    for retrieval in retrievals:
        results = retrieve_many(db, texts, rerank or k, retrieval=retrieval, weights=weights)
        if lm is not None:
            results = [rerank_hits(lm, text, hits)[:k] for text, hits in zip(texts, results)]
        ranks = [first_rank(hits, q.source) for q, hits in zip(questions, results)]
        recalls = [recall(hits, q.source, counts) for q, hits in zip(questions, results)]
        mrr = mean_reciprocal_rank(ranks)
        reports[retrieval] = EvalReport(
            k, hit_rate(ranks), mrr, questions, ranks, sum(recalls) / len(recalls), retrieval, rerank
        )
    return reports
