import copy

import pytest
import torch
from torch import nn

import tinylm.quantize as quantize_module
from tests.unit.tiny_hf import save_tiny_gpt_neo
from tinylm import load
from tinylm.checkpoint import save_checkpoint
from tinylm.cli import build_parser, main
from tinylm.errors import TinylmError
from tinylm.generate.engine import generate_batch
from tinylm.hf_model import HFCausalLM
from tinylm.model import GPTConfig, build_model
from tinylm.quantize import METHODS, Int8Embedding, Int8Linear, quantize, quantize_rows, weight_bytes
from tinylm.tokenizers import train_tokenizer

LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False)


def _model(seed: int = 0, **kw) -> nn.Module:
    """A tiny model whose matrices are scaled up so that its logits are peaked (a clear top token)."""
    cfg = GPTConfig(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_embd=32, **kw)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    if cfg.kind == "gpt":
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(8)
    return model


def _checkpoint(tmp_path):
    tok = train_tokenizer("char", ["abcdefghij klmnop: \n"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, **LLAMA)
    torch.manual_seed(0)
    meta = {"generation": {"max_new_tokens": 7, "stop": []}}
    return save_checkpoint(tmp_path / "ck", model=build_model(cfg), config=cfg, tokenizer=tok, meta=meta)


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_quantize_rows_rounds_each_weight_to_its_nearest_level():
    torch.manual_seed(0)
    w = torch.randn(24, 40) * torch.logspace(-3, 1, 24)[:, None]  # rows of very different magnitudes
    q, s = quantize_rows(w, torch.float32)
    assert q.dtype == torch.int8 and s.shape == (24,)
    assert q.abs().amax(1).tolist() == [127] * 24  # every row uses its full range
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_close_to_the_float_linear(bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    x = torch.randn(3, 5, 64)
    q = Int8Linear.from_linear(linear)
    with torch.no_grad():
        got, want = q(x), linear(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32
    assert q.qweight.dtype == torch.int8 and q.scales.shape == (48,)
    assert _rel_error(got, want) < 0.01  # int8 weights (~0.3%) and bfloat16 activations (~0.4%)


def test_the_dequantizing_fallback_equals_the_int8_kernel(monkeypatch):
    torch.manual_seed(0)
    q = Int8Linear.from_linear(nn.Linear(64, 48))
    x = torch.randn(5, 64)
    assert quantize_module._KERNEL["cpu"]  # PyTorch's CPU kernel was found
    with torch.no_grad():
        kernel = q(x)
        monkeypatch.setitem(quantize_module._KERNEL, "cpu", False)  # as on a device without the kernel
        fallback = q(x)
    assert _rel_error(fallback, kernel) < 0.01  # both round to bfloat16 on the CPU, in different places


@pytest.mark.parametrize("kw", [LLAMA, {}, {"tie_embeddings": False}, {"kind": "gru"}])
def test_quantized_model_logits_and_greedy_tokens_match_float(kw):
    model = _model(**kw)
    quant = quantize(copy.deepcopy(model), "int8")
    assert not any(isinstance(m, nn.Linear | nn.Embedding) and n != "wpe" for n, m in quant.named_modules())
    x = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), quant(x)
    assert _rel_error(got, want) < 0.05
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9
    prompt = [1, 2, 3]
    tokens = generate_batch(quant, [prompt], max_new_tokens=24, block_size=64)[0].tokens
    assert len(tokens) == 24
    with torch.no_grad():  # the float model's own greedy choice after each prefix of the int8 generation
        float_choice = model(torch.tensor([prompt + tokens]))[0, len(prompt) - 1 : -1].argmax(-1)
    same = sum(a == b for a, b in zip(float_choice.tolist(), tokens))
    assert same >= 22, f"only {same}/24 greedy tokens agree"


def test_tied_head_and_embedding_share_one_int8_table():
    model = quantize(_model(**LLAMA), "int8")
    assert isinstance(model.wte, Int8Embedding) and isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.qweight is model.wte.qweight and model.lm_head.scales is model.wte.scales
    # the KV cache keeps the activations' dtype although the table is int8
    assert model.wte.weight.dtype == torch.float32 and model.wte.weight.numel() == 0
    assert model.new_cache(1, 8).layers[0][0].dtype == torch.float32


def test_quantized_weights_take_about_a_quarter_of_the_bytes():
    cfg = GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=4, n_embd=128, **LLAMA)
    model = build_model(cfg)
    before = weight_bytes(model)
    assert before == 4 * sum(p.numel() for p in model.parameters())  # float32, the tied table counted once
    ratio = before / weight_bytes(quantize(model, "int8"))
    assert 3.8 < ratio < 4.0, ratio  # int8 plus a scale per row and the float32 norms


def test_none_leaves_the_model_alone_and_twice_is_an_error():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    assert quantize(model, "none") is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    quantize(model, "int8")
    with pytest.raises(TinylmError, match="already quantized"):
        quantize(model, "int8")


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(TinylmError, match=r"expected one of none, int8, found 'int4'"):
        quantize(_model(), "int4")
    with pytest.raises(TinylmError, match=r"found 'int4'"):
        load(_checkpoint(tmp_path), quantize="int4")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(tmp_path / "ck"), "abc", "--quantize", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_cli_accepts_every_method_and_defaults_to_none():
    parser = build_parser()
    assert parser.parse_args(["generate", "model", "hi"]).quantize == "none"
    for method in METHODS:
        assert parser.parse_args(["generate", "model", "hi", "--quantize", method]).quantize == method


def test_load_and_cli_generate_with_int8(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    lm = load(path, quantize="int8")
    assert isinstance(lm.model.h[0].attn.qkv, Int8Linear) and lm.device.type == "cpu"
    text = lm.generate("abc", max_new_tokens=6)
    assert "".join(lm.stream("abc", max_new_tokens=6)) == text
    assert isinstance(lm.generate("abc", max_new_tokens=6, num_beams=2), str)  # beam search reads wte.weight
    assert lm.embed(["abc", "de"]).shape == (2, 16)
    assert main(["generate", str(path), "abc", "--max-new-tokens", "6", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_models_run_through_transformers_quantize_their_linears(tmp_path):
    model = HFCausalLM.from_pretrained(save_tiny_gpt_neo(tmp_path / "neo"))
    quant = quantize(copy.deepcopy(model), "int8")
    assert isinstance(quant.hf.lm_head, Int8Linear)  # the head as its own int8 copy; the embedding stays
    x = torch.randint(0, model.hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _rel_error(quant(x), model(x)) < 0.05
    assert weight_bytes(quant) < 0.55 * weight_bytes(model)


@pytest.mark.gpu
def test_int8_on_cuda_matches_the_cpu_float_model():
    model = _model(**LLAMA)
    quant = quantize(copy.deepcopy(model).cuda(), "int8")
    assert quant.lm_head.qweight.is_cuda
    x = torch.randint(0, 96, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = quant(x.cuda()).cpu()
        want = model(x)
    assert _rel_error(got, want) < 0.05
    rows = generate_batch(quant, [[1, 2, 3]], max_new_tokens=8, block_size=64)
    assert len(rows[0].tokens) == 8
