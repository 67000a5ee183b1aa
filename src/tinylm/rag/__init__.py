"""Retrieval-augmented generation over your own documents.

Index files into one SQLite database (`index`), find the chunks nearest a question (`retrieve`), answer
from them with any tinylm model (`ask`), and measure retrieval on labelled questions (`evaluate`, and
`compare` for the dense, lexical and hybrid modes side by side), optionally reranking the top candidates
by a model's likelihood of the question (`rerank_hits`, the `rerank` keyword of `ask` and `compare`). A chat
loop needs only `context_for(db, question)` (or the hook `retriever(db)`): the numbered sources as text.

Layout, one type per module: documents (files → text sections), chunking (sections → token-sized
chunks), embedders (text → unit vectors), db (SQLite bookkeeping), store and qdrant (vectors and nearest
neighbours), lexical (the FTS5 index, BM25 and rank fusion), indexing, retrieval, rerank, answer, evaluation.
"""

from tinylm.rag.answer import Answer, ask, compose_prompt
from tinylm.rag.evaluation import EvalReport, compare, evaluate
from tinylm.rag.indexing import IndexReport, index, upgrade
from tinylm.rag.rerank import rerank_hits
from tinylm.rag.retrieval import RETRIEVALS, Hit, context_for, retrieve, retriever

__all__ = [
    "RETRIEVALS",
    "Answer",
    "EvalReport",
    "Hit",
    "IndexReport",
    "ask",
    "compare",
    "compose_prompt",
    "context_for",
    "evaluate",
    "index",
    "rerank_hits",
    "retrieve",
    "retriever",
    "upgrade",
]
