"""A llama-architecture GGUF file read straight into a transformers-named state dict, parsing the file once.

transformers loads GGUF files itself (`from_pretrained(..., gguf_file=...)`), but it parses the file once for
the config, again for the weights and again for the tokenizer, and rebuilds its tensor-name tables for every
tensor: 26 s to convert SmolLM2-135M-Instruct on 2 CPU cores. This module reads the file once with the `gguf`
package, dequantizes each tensor with the same `gguf.dequantize` that transformers calls, undoes llama.cpp's
row permutation of the q and k projections as transformers' `LlamaTensorProcessor` does, and names the
tensors and config fields as in a transformers `LlamaForCausalLM`, so `tinylm.convert` maps them onto the
GPT as it maps any Llama. The tokenizer still comes from transformers (`AutoTokenizer`, one more parse).

A file that is not a plain llama returns None, and the caller takes transformers' path: other
architectures, files named as Mistral (transformers reads those as Mistral), files lacking a llama key this
reader needs (transformers fills in defaults). A llama file that neither this reader nor transformers'
loader maps faithfully is a TinylmError, where transformers would drop what it does not know and give a
different model: RoPE scaling (a `rope.scaling.type` other than none, or Llama 3.1's `rope_freqs` tensor),
biases, or tensors of another layout (MoE experts). So is a file that is not valid GGUF (truncated, ...).

Memory: the tensors come one at a time, so `tinylm.convert` copies each into the GPT as it is dequantized
and never holds a second copy of the weights (transformers' path held two).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from tinylm.errors import CheckpointError, TinylmError

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


_BROKEN = (OSError, ValueError, IndexError, TypeError, KeyError)  # what a damaged file raises in the reader


def read_llama_gguf(path: str | Path) -> tuple[LlamaConfig, Iterator[tuple[str, Tensor]]] | None:
    """(the LlamaConfig, the float32 tensors with transformers' names, dequantized one at a time as the
    iterator is read) of a llama GGUF file; None for a file that is not a plain llama, TinylmError for one
    that cannot be mapped or read (see the module docstring)."""
    try:
        read = _read(Path(path))
    except _BROKEN as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    return None if read is None else (read[0], _checked(path, read[1]))


def _checked(path: str | Path, tensors: Iterator[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    try:
        yield from tensors
    except _BROKEN as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _read(path: Path) -> tuple[LlamaConfig, Iterator[tuple[str, Tensor]]] | None:
    from gguf import GGUFReader, dequantize
    from transformers import LlamaConfig

    reader = GGUFReader(str(path))

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    name = str(field("general.name", "")).lower()
    if field("general.architecture") != "llama" or "mistral" in name:
        return None
    needed = (
        "embedding_length",
        "attention.head_count",
        "feed_forward_length",
        "block_count",
        "context_length",
    )
    if any(f"llama.{key}" not in reader.fields for key in (*needed, "attention.layer_norm_rms_epsilon")):
        return None
    scaling = str(field("llama.rope.scaling.type", "none"))
    unknown = [t.name for t in reader.tensors if _hf_name(t.name) is None]
    if scaling != "none" or unknown:
        why = (
            f"RoPE scaling {scaling!r}"
            if scaling != "none"
            else f"tensors {unknown[:3]} ({len(unknown)} in all)"
        )
        raise TinylmError(
            f"{path}: a llama GGUF with {why}; tinylm maps plain Llama weights (RoPE without scaling, no biases, "
            "no experts), and transformers' GGUF loader would drop what it does not know, giving a different model"
        )
    if "token_embd.weight" not in {t.name for t in reader.tensors}:
        raise KeyError("token_embd.weight")
    n_embd = int(field("llama.embedding_length"))
    n_head = int(field("llama.attention.head_count"))
    n_kv_head = int(field("llama.attention.head_count_kv", n_head))

    def tensors() -> Iterator[tuple[str, Tensor]]:
        for t in reader.tensors:
            w = dequantize(t.data, t.tensor_type)  # a new array, or a read-only view of the file (float32)
            fresh = w.flags.writeable and not isinstance(w, np.memmap) and w.dtype == np.float32
            w = torch.from_numpy(w if fresh else np.array(w, dtype=np.float32))
            if ".attn_q." in t.name:
                w = _unpermute(w, n_head)
            elif ".attn_k." in t.name:
                w = _unpermute(w, n_kv_head)
            yield _hf_name(t.name), w

    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = LlamaConfig(
        vocab_size=int(embedding.shape[1]),  # GGUF shapes list the fastest dimension first
        hidden_size=n_embd,
        intermediate_size=int(field("llama.feed_forward_length")),
        num_hidden_layers=int(field("llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        head_dim=int(field("llama.rope.dimension_count", n_embd // n_head)),
        max_position_embeddings=int(field("llama.context_length")),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
    )
    return config, tensors()


def _hf_name(gguf_name: str) -> str | None:
    """blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight; None for a name it does not know."""
    m = _NAME.fullmatch(gguf_name)
    if m is None:
        return None
    layer, part = m.groups()
    table, prefix = (_TOP, "") if layer is None else (_LAYER, f"model.layers.{layer}.")
    return f"{prefix}{table[part]}.weight" if part in table else None


def _unpermute(w: Tensor, n_head: int) -> Tensor:
    """Undo llama.cpp's interleaving of the rotary halves in q/k rows (transformers' reverse permute)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
