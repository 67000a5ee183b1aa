"""Tiny chat checkpoints for the chat tests: built in a second, deterministic, no download."""

from __future__ import annotations

from pathlib import Path

import torch

from tinylm.checkpoint import save_checkpoint
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'<|>_\n"


def chat_checkpoint(
    directory: Path, *, block_size: int = 256, constant: str | None = None, kind: str = "char"
) -> Path:
    """A 2-layer, 16-dim checkpoint with the `chatml` template.

    With `constant`, the final norm outputs one fixed vector and the head scores only that character,
    so greedy decoding repeats it forever (it never emits EOS): a reply of exactly max_new_tokens
    characters, slow enough to kill mid-way when max_new_tokens is large.
    """
    if kind == "char":
        tok = train_tokenizer("char", [ALPHABET])
    else:
        tok = train_tokenizer(
            kind, ["the quick brown fox jumps over the lazy dog " * 20, ALPHABET], vocab_size=300
        )
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=16,
        pos="rope",
        tie_embeddings=constant is None,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    if constant is not None:
        (target,) = tok.encode(constant)
        with torch.no_grad():
            model.ln_f.weight.zero_()
            model.ln_f.bias.fill_(1.0)  # every hidden state is the all-ones vector
            model.lm_head.weight.zero_()
            model.lm_head.weight[target].fill_(1.0)  # logit n_embd for `constant`, 0 for the rest
    meta = {"chat_template_name": "chatml", "generation": {"max_new_tokens": 8}}
    return save_checkpoint(directory, model=model, config=cfg, tokenizer=tok, meta=meta)
