"""Reranking retrieved chunks by a causal LM's query likelihood: how likely the model finds the question
after the passage (UPR, Sachan et al. 2022), when no cross-encoder is at hand.

Each candidate is laid out as `Passage: {chunk}` + `\\nQuestion:` + ` {question}` and scored by the mean
log-probability of the question's tokens; candidates are run in right-padded batches, one forward pass per
batch (causal attention: the padding after a row changes none of its logits). The passage keeps its first
tokens (a chunk starts at the start of a sentence or section) so that the whole fits the model's context
window; the question keeps its first half-window at most. Reranking is off unless asked for (`--rerank N`),
and whether it pays for itself is measured in BENCHMARKS.md.

This module scores and reorders hits; it neither retrieves (`tinylm.rag.retrieval`) nor generates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from tinylm.api import LM
from tinylm.errors import TinylmError
from tinylm.rag.retrieval import Hit

MAX_CANDIDATES = 100
"""The most candidates one question may have reranked (`--rerank N`): each costs a forward pass over a chunk."""
MAX_PASSAGE_TOKENS = 1024
"""A passage is cut to its first this many tokens, whatever the model's window: chunks are far shorter."""
BATCH = 16
"""The most candidates in one forward pass."""
MAX_LOGITS = 2**26
"""The most logits (batch x width x vocabulary, 256 MB in float32) one forward pass may allocate."""
HEAD, TAIL = "Passage:", "\nQuestion:"


def check_rerank(rerank: int, k: int) -> int:
    """`rerank` if it is 0 (off) or a whole number of candidates from `k` to MAX_CANDIDATES; else a
    TinylmError naming --rerank."""
    whole = isinstance(rerank, int) and not isinstance(rerank, bool)
    if not whole or not (rerank == 0 or k <= rerank <= MAX_CANDIDATES):
        raise TinylmError(
            f"--rerank: expected 0 (off) or how many top candidates to rerank, from --k ({k}) to "
            f"{MAX_CANDIDATES}, found {rerank!r}"
        )
    return rerank


def rerank_hits(lm: LM, question: str, hits: Sequence[Hit]) -> list[Hit]:
    """`hits` reordered by `query_likelihoods` (best first; ties keep the retrieval order), ranks renumbered
    from 1 and each score replaced by its mean log-probability of the question."""
    scores = query_likelihoods(lm, question, [h.text for h in hits])
    order = sorted(range(len(hits)), key=lambda i: -scores[i])
    return [dataclasses.replace(hits[i], rank=rank, score=scores[i]) for rank, i in enumerate(order, 1)]


@torch.inference_mode()
def query_likelihoods(lm: LM, question: str, passages: Sequence[str]) -> list[float]:
    """Per passage, the mean log-probability under `lm` of the question's tokens after the passage's prompt."""
    if len(passages) > MAX_CANDIDATES:
        raise TinylmError(
            f"--rerank: at most {MAX_CANDIDATES} candidates per question, found {len(passages)}"
        )
    if not passages:
        return []
    rows, n = layouts(lm, question, passages)
    width, vocab = max(len(r) for r in rows), lm.model.config.vocab_size
    per_batch = max(1, min(BATCH, MAX_LOGITS // (width * vocab)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # rows of like length share a batch
    scores = [0.0] * len(rows)
    for first in range(0, len(order), per_batch):
        batch = order[first : first + per_batch]
        ids = right_padded([rows[i] for i in batch], lm.tokenizer.pad_id)  # (B, T)
        logits = lm.model(ids.to(lm.device))  # (B, T, vocab)
        for j, i in enumerate(batch):
            end = len(rows[i])  # the question is the row's last n tokens, each predicted by the one before
            logp = torch.log_softmax(logits[j, end - n - 1 : end - 1].float(), dim=-1)  # (n, vocab)
            target = ids[j, end - n : end].to(logp.device)  # (n,)
            scores[i] = logp.gather(-1, target[:, None]).mean().item()
    return scores


def layouts(lm: LM, question: str, passages: Sequence[str]) -> tuple[list[list[int]], int]:
    """Each passage's token ids `HEAD passage TAIL question`, cut to fit the context window, and the number
    of the question's tokens, which end every row."""
    encode = lm.tokenizer.encode
    block = lm.model.config.block_size
    head, tail = encode(HEAD), encode(TAIL)
    asked = encode(" " + question.strip())[: block // 2]
    room = min(block - len(head) - len(tail) - len(asked), MAX_PASSAGE_TOKENS)
    if room < 0:
        raise TinylmError(
            f"--rerank: the model's {block}-token context window cannot hold the reranking prompt "
            f"({len(head) + len(tail)} tokens) and the question ({len(asked)})"
        )
    assert asked, "a question is at least its leading space"
    return [head + encode(" " + p.strip())[:room] + tail + asked for p in passages], len(asked)


def right_padded(rows: Sequence[list[int]], pad: int) -> torch.Tensor:
    """The rows as one (B, T) tensor of token ids, each padded on the right with `pad` to the longest."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for j, row in enumerate(rows):
        ids[j, : len(row)] = torch.tensor(row)
    return ids
