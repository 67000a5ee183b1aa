"""Tiny Hugging Face model directories saved like hub downloads, built offline: a byte-level BPE tokenizer
trained on a few lines, and a random GPT-Neo (an architecture tinylm does not convert)."""

from pathlib import Path

import torch

CORPUS = ["the cat sat on the mat", "a dog ate the bone", "the bird sang a song at dawn"] * 3


def save_tiny_tokenizer(path: Path, corpus: list[str] = CORPUS, vocab_size: int = 300):
    """A byte-level BPE tokenizer of `corpus` (bytes it never saw are dropped) with <|endoftext|> as eos and
    pad, saved into `path`; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    hf_tok.save_pretrained(path)
    return hf_tok


def save_tiny_gpt_neo(path: Path, corpus: list[str] = CORPUS) -> Path:
    """A 2-layer, 32-dim GPT-Neo (one global and one local attention layer) and its tokenizer, in `path`."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tok = save_tiny_tokenizer(path, corpus)
    torch.manual_seed(0)
    cfg = GPTNeoConfig(
        vocab_size=len(tok),
        max_position_embeddings=128,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        intermediate_size=64,
        initializer_range=0.2,  # larger than GPT-Neo's 0.02, so greedy decoding does not repeat one token
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPTNeoForCausalLM(cfg).save_pretrained(path)
    return path
