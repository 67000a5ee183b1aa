"""From a run config to token datasets: read the data, build (or load) the tokenizer, cut train/val.

This is the recipe-level glue between `tinylm.data` (files → records → token datasets) and the training
loop. It returns datasets and statistics; it does not train or log anything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from tinylm.config import RunConfig, TokenizerConfig
from tinylm.data.datasets import (
    PairRows,
    QARows,
    TokenDataset,
    TokenWindows,
    encode_example,
    encode_pair,
    pair_prompt,
)
from tinylm.data.formats import Example, Pair, read_documents, read_examples, read_pairs
from tinylm.errors import DataError
from tinylm.templates import layout_prompt
from tinylm.tokenizers import EOS_TOKEN, Tokenizer, load_tokenizer, train_tokenizer

T = TypeVar("T")  # an Example or a Pair


@dataclass
class Prepared:
    tokenizer: Tokenizer
    train: TokenDataset
    val: TokenDataset | None
    stats: dict[str, float] = field(default_factory=dict)
    val_examples: list[Example] = field(
        default_factory=list
    )  # Q/A data: the raw pairs, for generation metrics


def build_tokenizer(tcfg: TokenizerConfig, texts: list[str]) -> Tokenizer:
    if tcfg.path is not None:
        return load_tokenizer(tcfg.path)
    return train_tokenizer(tcfg.kind, texts, vocab_size=tcfg.vocab_size)


def prepare(cfg: RunConfig, tokenizer: Tokenizer | None = None) -> Prepared:
    """Datasets for `cfg`; the tokenizer is trained on the data unless one is given (resume) or configured."""
    if cfg.data.kind == "text":
        return _prepare_text(cfg, tokenizer)
    if cfg.train.objective == "dpo":
        return _prepare_pairs(cfg, tokenizer)
    return _prepare_qa(cfg, tokenizer)


def _prepare_text(cfg: RunConfig, tokenizer: Tokenizer | None) -> Prepared:
    d = cfg.data
    text = EOS_TOKEN.join(read_documents(d.path))
    tok = tokenizer or build_tokenizer(cfg.tokenizer, [text])
    cut = int(len(text) * (1.0 - d.val_fraction))  # val = the last val_fraction of characters
    train_ids = torch.tensor(tok.encode(text[:cut]), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(text[cut:]), dtype=torch.long) if d.val_fraction > 0 else None
    try:
        train = TokenWindows(train_ids, d.max_length, d.stride)
        val = TokenWindows(val_ids, d.max_length, d.max_length) if val_ids is not None else None
    except ValueError as e:
        raise DataError(f"{d.path}: {e}") from None
    stats = {"train_tokens": len(train_ids), "val_tokens": 0 if val_ids is None else len(val_ids)}
    return Prepared(tok, train, val, stats)


def _prepare_qa(cfg: RunConfig, tokenizer: Tokenizer | None) -> Prepared:
    d = cfg.data
    keys = {"prompt_key": d.prompt_key, "response_key": d.response_key}
    train_ex = read_examples(d.path, split=d.split, **keys)
    if d.val_split is not None:
        val_ex = read_examples(d.path, split=d.val_split, **keys)
    else:
        train_ex, val_ex = _hold_out(train_ex, d.val_fraction, cfg.seed)
    layout = [layout_prompt(e.prompt, d.prompt_template, tokenizer) + e.response for e in train_ex + val_ex]
    tok = tokenizer or build_tokenizer(cfg.tokenizer, layout)
    train, stats = _qa_rows(train_ex, tok, cfg)
    val = _qa_rows(val_ex, tok, cfg)[0] if val_ex else None
    return Prepared(tok, train, val, {**stats, "val_examples": len(val_ex)}, val_ex)


def _prepare_pairs(cfg: RunConfig, tokenizer: Tokenizer | None) -> Prepared:
    """Preference pairs as `PairRows`; the val examples (for generation metrics) are the chosen answers."""
    d = cfg.data
    train_p = read_pairs(d.path, split=d.split, prompt_key=d.prompt_key)
    if d.val_split is not None:
        val_p = read_pairs(d.path, split=d.val_split, prompt_key=d.prompt_key)
    else:
        train_p, val_p = _hold_out(train_p, d.val_fraction, cfg.seed)
    texts = [pair_prompt(p, d.prompt_template, tokenizer) + p.chosen + p.rejected for p in train_p + val_p]
    tok = tokenizer or build_tokenizer(cfg.tokenizer, texts)
    train, stats = _pair_rows(train_p, tok, cfg)
    val = _pair_rows(val_p, tok, cfg)[0] if val_p else None
    val_examples = [Example(p.prompt, p.chosen) for p in val_p]
    return Prepared(tok, train, val, {**stats, "val_pairs": len(val_p)}, val_examples)


def _pair_rows(pairs: list[Pair], tok: Tokenizer, cfg: RunConfig) -> tuple[PairRows, dict[str, float]]:
    d = cfg.data
    enc = [encode_pair(p, tok, template=d.prompt_template, max_length=d.max_length) for p in pairs]
    stats = {
        "pairs": len(enc),
        "truncated": sum(e.truncated for e in enc),
        "prompt_tokens": sum(len(e.prompt) for e in enc),
        "chosen_tokens": sum(len(e.chosen) for e in enc),
        "rejected_tokens": sum(len(e.rejected) for e in enc),
    }
    return PairRows(enc, tok.pad_id), stats


def _hold_out(examples: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    if fraction <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(examples) * fraction))
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]


def _qa_rows(examples: list[Example], tok: Tokenizer, cfg: RunConfig) -> tuple[QARows, dict[str, float]]:
    d = cfg.data
    enc = [
        encode_example(e, tok, template=d.prompt_template, max_length=d.max_length, loss_on=d.loss_on)
        for e in examples
    ]
    rows = QARows(enc, tok.pad_id, pack_length=d.max_length if d.packing else None)
    stats = {
        "examples": len(enc),
        "rows": len(rows),
        "truncated": sum(e.truncated for e in enc),
        "missing_eos": sum(not e.has_eos for e in enc),
        "loss_tokens": sum(sum(t != -100 for t in e.labels) for e in enc),
    }
    return rows, stats


def resolve_resume(resume: str | None, ckpt_root: Path) -> Path | None:
    """`auto` → the run's `last` checkpoint if it exists; a path → that path; None → start fresh."""
    if resume is None:
        return None
    if resume == "auto":
        last = ckpt_root / "last"
        return last if last.exists() else None
    return Path(resume)
