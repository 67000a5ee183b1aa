"""A llama-architecture GGUF file read straight into a transformers-named state dict, parsing the file once.

transformers loads GGUF files itself (`from_pretrained(..., gguf_file=...)`), but it parses the file once for
the config, again for the weights and again for the tokenizer, and rebuilds its tensor-name tables for every
tensor: 26 s to convert SmolLM2-135M-Instruct on 2 CPU cores. This module reads the file once with the `gguf`
package, dequantizes each tensor with the same `gguf.dequantize` that transformers calls, undoes llama.cpp's
row permutation of the q and k projections as transformers' `LlamaTensorProcessor` does, and names the
tensors and config fields as in a transformers `LlamaForCausalLM`, so `tinylm.convert` maps them onto the
GPT as it maps any Llama. The tokenizer still comes from transformers (`AutoTokenizer`, one more parse).

What it does not cover returns None, and the caller takes transformers' path: other architectures, files
named as Mistral (transformers reads those as Mistral), RoPE scaling (a `rope.scaling.type` other than
none, or a `rope_freqs` tensor), and any tensor it has no name for (biases included).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import LlamaConfig

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_NAME = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.weight")  # no biases: a llama with them is not plain Llama


def read_llama_gguf(path: str | Path) -> tuple[LlamaConfig, dict[str, Tensor]] | None:
    """(the LlamaConfig, the float32 state dict with transformers' names) of a llama GGUF file, or None
    for a file this reader does not cover (see the module docstring)."""
    from gguf import GGUFReader, dequantize
    from transformers import LlamaConfig

    reader = GGUFReader(str(path))

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    name = str(field("general.name", "")).lower()
    if field("general.architecture") != "llama" or "mistral" in name:
        return None
    if str(field("llama.rope.scaling.type", "none")) != "none":
        return None
    names = {t.name: _hf_name(t.name) for t in reader.tensors}
    if None in names.values() or "token_embd.weight" not in names:
        return None  # rope_freqs (Llama 3.1 scaling) or a tensor of another layout
    n_embd = int(field("llama.embedding_length"))
    n_head = int(field("llama.attention.head_count"))
    n_kv_head = int(field("llama.attention.head_count_kv", n_head))
    state = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if ".attn_q." in t.name:
            w = _unpermute(w, n_head)
        elif ".attn_k." in t.name:
            w = _unpermute(w, n_kv_head)
        state[names[t.name]] = torch.tensor(w)  # a copy: the reader's arrays map the file
    config = LlamaConfig(
        vocab_size=state["model.embed_tokens.weight"].size(0),
        hidden_size=n_embd,
        intermediate_size=int(field("llama.feed_forward_length")),
        num_hidden_layers=int(field("llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        head_dim=int(field("llama.rope.dimension_count", n_embd // n_head)),
        max_position_embeddings=int(field("llama.context_length")),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings="lm_head.weight" not in state,
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
    )
    return config, state


def _hf_name(gguf_name: str) -> str | None:
    """blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight; None for a name it does not know."""
    m = _NAME.fullmatch(gguf_name)
    if m is None:
        return None
    layer, part = m.groups()
    table, prefix = (_TOP, "") if layer is None else (_LAYER, f"model.layers.{layer}.")
    return f"{prefix}{table[part]}.weight" if part in table else None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of the rotary halves in q/k rows (transformers' reverse permute)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
