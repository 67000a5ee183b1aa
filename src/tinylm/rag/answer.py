"""Answer a question from a RAG database: retrieve, lay out numbered sources, generate, return with sources.

A model with a chat template (its tokenizer's own, or a named one in its checkpoint) gets a system message
with the instructions and sources, then the question as the user's message. Any other model gets one plain
prompt ending in "Answer:", sent as it is (raw, without the checkpoint's prompt template). With `rerank`
N, the top N chunks are reordered by the same model's likelihood of the question (`tinylm.rag.rerank`)
before the top k are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinylm.api import LM, Prompt, load
from tinylm.rag.rerank import check_rerank, rerank_hits
from tinylm.rag.retrieval import DEFAULT_RETRIEVAL, DEFAULT_WEIGHTS, Hit, check_k, format_context, retrieve


@dataclass
class Answer:
    """The model's reply, the sources it was shown (citation numbers are their ranks), and the exact prompt."""

    text: str
    sources: list[Hit]
    prompt: Prompt


def has_chat_template(lm: LM) -> bool:
    """Whether the model was made to chat: a named template in its checkpoint or one in its HF tokenizer."""
    hf = getattr(lm.tokenizer, "hf", None)
    return lm.chat_template is not None or bool(getattr(hf, "chat_template", None))


def compose_prompt(question: str, hits: Sequence[Hit], *, chat: bool) -> Prompt:
    """Chat messages (system: instructions + sources; user: the question), or one plain-text prompt."""
    context = format_context(hits)
    if chat:
        return [{"role": "system", "content": context}, {"role": "user", "content": question}]
    return f"{context}\n\nQuestion: {question}\nAnswer:"


def ask(
    db: str | Path,
    question: str,
    model: str | Path | LM,
    *,
    k: int = 4,
    retrieval: str = DEFAULT_RETRIEVAL,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    rerank: int = 0,
    **options: Any,
) -> Answer:
    """Answer `question` with `model` (a name, a path or a loaded LM) from the `k` best-matching chunks of
    `db` (`retrieval`: dense, lexical or hybrid, see `tinylm.rag.retrieval`); with `rerank` N (0: off, else
    from k to 100), the top N are first reranked by the model's likelihood of the question.

    `options` are generation options (`tinylm.api.GenerationOptions`), e.g. max_new_tokens, temperature.
    """
    check_rerank(rerank, check_k(k))
    hits = retrieve(db, question, rerank or k, retrieval=retrieval, weights=weights)
    lm = model if isinstance(model, LM) else load(model)
    if rerank:
        hits = rerank_hits(lm, question, hits)[:k]
    prompt = compose_prompt(question, hits, chat=has_chat_template(lm))
    return Answer(lm.generate(prompt, raw=True, **options).strip(), hits, prompt)
