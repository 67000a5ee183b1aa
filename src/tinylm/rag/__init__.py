"""Retrieval-augmented generation over your own documents.

Index files into one SQLite database (`index`), find the chunks nearest a question (`retrieve`), answer
from them with any tinylm model (`ask`), and measure retrieval on labelled questions (`evaluate`). A chat
loop needs only `context_for(db, question)` (or the hook `retriever(db)`): the numbered sources as text.

Layout, one type per module: documents (files → text sections), chunking (sections → token-sized
chunks), embedders (text → unit vectors), db (SQLite bookkeeping), store and qdrant (vectors and nearest
neighbours), indexing, retrieval, answer, evaluation.
"""

from tinylm.rag.answer import Answer, ask, compose_prompt
from tinylm.rag.evaluation import EvalReport, evaluate
from tinylm.rag.indexing import IndexReport, index
from tinylm.rag.retrieval import Hit, context_for, retrieve, retriever

__all__ = [
    "Answer",
    "EvalReport",
    "Hit",
    "IndexReport",
    "ask",
    "compose_prompt",
    "context_for",
    "evaluate",
    "index",
    "retrieve",
    "retriever",
]
