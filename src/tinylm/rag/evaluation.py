"""Retrieval quality on labelled questions: hit rate@k, mean reciprocal rank (MRR) and recall@k, for one
retrieval mode (`evaluate`) or each of them side by side (`compare`).

The questions file is JSONL, one `{"question": ..., "source": ...}` per line, `source` naming the document
that answers it: a file name (`cats.md`), a tail of its path (`notes/cats.md`) or its full path. A question
is a hit when a chunk of that document is among its top k; its reciprocal rank is 1/rank of the first such
chunk (0 when none is); its recall is the fraction of that document's chunks among its top k. A source
that names no indexed document is an error, not a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tinylm.data.formats import as_object, jsonl_records, string_field
from tinylm.errors import DataError
from tinylm.rag.db import RagDB
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

    def as_dict(self) -> dict:
        return {
            "k": self.k,
            "retrieval": self.retrieval,
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
) -> EvalReport:
    """Retrieve the top `k` chunks for every question of `questions_path` and score them."""
    return compare(db, questions_path, k, retrievals=[retrieval], weights=weights)[retrieval]


def compare(
    db: str | Path,
    questions_path: str | Path,
    k: int = 5,
    *,
    retrievals: Sequence[str] = RETRIEVALS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> dict[str, EvalReport]:
    """`evaluate` for each retrieval mode of `retrievals`, on the same questions: a report per mode."""
    check_k(k)
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
    reports = {}
    for retrieval in retrievals:
        results = retrieve_many(db, [q.question for q in questions], k, retrieval=retrieval, weights=weights)
        ranks = [first_rank(hits, q.source) for q, hits in zip(questions, results)]
        recalls = [recall(hits, q.source, counts) for q, hits in zip(questions, results)]
        mrr = mean_reciprocal_rank(ranks)
        reports[retrieval] = EvalReport(
            k, hit_rate(ranks), mrr, questions, ranks, sum(recalls) / len(recalls), retrieval
        )
    return reports
