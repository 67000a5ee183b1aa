"""gguf_llama.py: a tiny Llama written as a llama.cpp-style GGUF (q/k rows permuted, one Q8_0 tensor) reads
back into transformers' names and config; what it does not cover returns None."""

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tinylm.cli import main  # noqa: E402
from tinylm.convert import config_from_hf, copy_from_hf, state_dict_from_hf  # noqa: E402
from tinylm.errors import TinylmError  # noqa: E402
from tinylm.gguf_llama import read_llama_gguf  # noqa: E402
from tinylm.model import GPT  # noqa: E402

N_HEAD, N_KV, N_EMBD, N_LAYER = 4, 2, 32, 2
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=N_EMBD, intermediate_size=48, num_hidden_layers=N_LAYER,
                         num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=96,
                         rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tie, initializer_range=0.3)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norm weights that are not all ones
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q and k rows (LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(
    path: Path, model, *, arch: str = "llama", name: str = "tiny", extra=(), skip=(), scaling=None
) -> dict[str, np.ndarray]:
    """Write `model` as llama.cpp would (F32, the embedding as Q8_0); return what each tensor should read
    back as, by transformers name."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(5000.0)
    if "llama.attention.layer_norm_rms_epsilon" not in skip:
        w.add_layer_norm_rms_eps(1e-5)
    if scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(scaling))
        w.add_rope_scaling_factor(4.0)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    want = {}
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.numpy().astype(np.float32)
        want[hf_name] = a
        if hf_name == "model.embed_tokens.weight":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor("token_embd.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            want[hf_name] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            continue
        if hf_name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            gguf_name = "output.weight"
        else:
            layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
            gguf_name = f"blk.{layer}.{LAYER_NAMES[rest.removesuffix('.weight')]}.weight"
            if "q_proj" in hf_name:
                a = _permute(a, N_HEAD)
            elif "k_proj" in hf_name:
                a = _permute(a, N_KV)
        w.add_tensor(gguf_name, a)
    for gguf_name, a in extra:
        w.add_tensor(gguf_name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return want


@pytest.mark.parametrize("tie", [True, False])
def test_a_llama_gguf_reads_back_into_transformers_names_and_logits(tmp_path, tie):
    model = _tiny_llama(tie)
    want = _write_gguf(tmp_path / "tiny.gguf", model)
    config, tensors = read_llama_gguf(tmp_path / "tiny.gguf")
    state = dict(tensors)
    assert set(state) == set(want)
    for name, a in want.items():
        np.testing.assert_array_equal(state[name].numpy(), a, err_msg=name)  # q/k rows back in HF order
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        N_LAYER,
        N_EMBD,
        N_HEAD,
    )
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (N_KV, 8, 48)
    assert (
        config.max_position_embeddings == 96 and config.vocab_size == 64 and config.tie_word_embeddings is tie
    )
    assert (config.rms_norm_eps, config.bos_token_id, config.eos_token_id) == (pytest.approx(1e-5), 1, 2)
    gpt_config = config_from_hf(config)
    assert gpt_config.rope_base == 5000.0
    gpt = GPT(gpt_config)
    copy_from_hf(gpt, read_llama_gguf(tmp_path / "tiny.gguf")[1], "llama")  # one tensor at a time
    reference = GPT(gpt_config)
    reference.load_state_dict(state_dict_from_hf(state, gpt_config, "llama"))
    for (name, a), b in zip(gpt.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    partial = ((k, v) for k, v in state.items() if "blk.1" not in k and "layers.1." not in k)
    with pytest.raises(
        TinylmError, match=r"lack 9 tensor\(s\) that its config implies, e.g. \['model.layers.1"
    ):
        copy_from_hf(GPT(gpt_config), partial, "llama")
    wrong = ((k, v[:-1] if k.endswith("k_proj.weight") else v) for k, v in state.items())
    with pytest.raises(
        TinylmError, match=r"k_proj.weight: expected shape \(16, 32\) \(the config's\), found \(15, 32\)"
    ):
        copy_from_hf(GPT(gpt_config), wrong, "llama")
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.from_numpy(want["model.embed_tokens.weight"]))
        torch.testing.assert_close(gpt.eval()(ids), model(ids).logits, atol=1e-4, rtol=1e-4)


def test_other_files_fall_back_and_unmappable_ones_are_clear_errors(tmp_path):
    model = _tiny_llama(True)
    _write_gguf(tmp_path / "gpt2.gguf", model, arch="gpt2")
    _write_gguf(tmp_path / "mistral.gguf", model, name="Mistral 7B tiny")
    _write_gguf(tmp_path / "no-eps.gguf", model, skip={"llama.attention.layer_norm_rms_epsilon"})
    for name in ("gpt2", "mistral", "no-eps"):  # transformers' loader takes these
        assert read_llama_gguf(tmp_path / f"{name}.gguf") is None, name

    freqs = [("rope_freqs.weight", np.ones(4, dtype=np.float32))]  # Llama 3.1's RoPE scaling
    _write_gguf(tmp_path / "freqs.gguf", model, extra=freqs)
    with pytest.raises(TinylmError, match=r"freqs.gguf: a llama GGUF with tensors \['rope_freqs.weight'\]"):
        read_llama_gguf(tmp_path / "freqs.gguf")
    bias = [("blk.0.attn_q.bias", np.zeros(N_EMBD, dtype=np.float32))]
    _write_gguf(tmp_path / "bias.gguf", model, extra=bias)
    with pytest.raises(TinylmError, match=r"tensors \['blk.0.attn_q.bias'\] \(1 in all\); tinylm maps plain"):
        read_llama_gguf(tmp_path / "bias.gguf")
    _write_gguf(tmp_path / "scaled.gguf", model, scaling="linear")
    with pytest.raises(TinylmError, match="a llama GGUF with RoPE scaling 'linear'"):
        read_llama_gguf(tmp_path / "scaled.gguf")

    whole = (tmp_path / "bias.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    for name in ("cut", "junk"):
        with pytest.raises(TinylmError, match=f"{name}.gguf: not a readable GGUF file"):
            read_llama_gguf(tmp_path / f"{name}.gguf")
    assert main(["generate", str(tmp_path / "cut.gguf"), "hi"]) == 2  # the CLI: one line, no traceback
