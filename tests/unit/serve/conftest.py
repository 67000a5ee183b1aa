"""A tiny random BPE GPT checkpoint and a server over it, shared by the server tests of a module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinylm import load
from tinylm.checkpoint import save_checkpoint
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer

KEY = "test-key"


def tiny_checkpoint(directory: Path) -> Path:
    """2 layers, 32 dims, a 1024-token window (long enough to cancel a reply mid-way), no end-of-text logit."""
    text = "the quick brown fox jumps over the lazy dog. héllo wörld, naïve café 🙂 " * 20
    tok = train_tokenizer("bpe", [text, "hello there, how are you today?"], vocab_size=300)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=2, n_head=2, n_embd=32, pos="rope")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # sharper distributions: greedy choices far from ties
        model.lm_head.weight[tok.eos_id] = 0  # replies run to their budget unless a stop string ends them
    save_checkpoint(directory, model=model, config=cfg, tokenizer=tok, meta={})
    return directory


@pytest.fixture(scope="module", autouse=True)
def _one_thread_here(one_thread):
    """Every server test runs its tiny models on one thread (`one_thread`, tests/unit/conftest.py)."""
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def lm(checkpoint):
    return load(checkpoint)
