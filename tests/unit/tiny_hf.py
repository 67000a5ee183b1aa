"""Tiny Hugging Face models and directories saved like hub downloads, built offline: a byte-level BPE tokenizer
trained on a few lines, a random GPT-Neo (an architecture tinylm does not convert), and random Llama / Qwen2
/ GPT-2 models (the families tinylm converts) with their logits helpers."""

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


# ----------------------------------------------------------------------------------------------------------
# The families tinylm converts (convert, hub and export tests)

VOCAB = 97
IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
SENTENCES = ["the cat sat on the mat", "a dog ate the bone", "the bird sang a song at dawn"] * 3
FAMILIES = {  # name -> the transformers class that export_hf must produce
    "llama": "LlamaForCausalLM",
    "llama_tied": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
SMOLLM2 = "smollm2-135m-instruct"


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Noise on every parameter, so zero-initialised biases and unit norm weights are mapped for real."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


TINY_LLAMA = {  # the shape of every tiny Llama (and Qwen2) of the tests
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def tiny_llama_config(cls: type | None = None, **fields):
    """A 2-layer, 32-dim Llama config (or one of `cls`, e.g. Qwen2Config), `fields` over the shape's."""
    from transformers import LlamaConfig

    return (cls or LlamaConfig)(**{**TINY_LLAMA, **fields})


def tiny_hf_model(family: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=1
        )
    else:
        cfg = tiny_llama_config(
            Qwen2Config if family == "qwen2" else LlamaConfig,
            vocab_size=VOCAB,
            rope_theta=5000.0,
            tie_word_embeddings=family == "llama_tied",
            bos_token_id=1,
            eos_token_id=1,
        )
    return randomize(AutoModelForCausalLM.from_config(cfg))


@torch.no_grad()
def logits_of(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def assert_close_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def tiny_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
