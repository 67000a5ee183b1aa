import copy

import pytest
import torch
import torch.nn.functional as F

from tinylm import cpu_kernels
from tinylm.generate.engine import generate_batch
from tinylm.model import GPTConfig, Linear, RMSNorm, build_model
from tinylm.quantize import Int8Linear, Int8SwiGLU, quantize, quantize_rows
from tinylm.train.lora import LoRALinear, apply_lora

needs_kernels = pytest.mark.skipif(
    not cpu_kernels.ready(), reason="no C compiler to build tinylm's CPU kernels"
)


@pytest.fixture
def spy(monkeypatch):
    """Count the calls that reach each C kernel."""
    calls = {"f32": 0, "int8": 0}
    f32, int8 = cpu_kernels._f32_run, cpu_kernels._int8_run

    def count_f32(*a):
        calls["f32"] += 1
        return f32(*a)

    def count_int8(*a):
        calls["int8"] += 1
        return int8(*a)

    monkeypatch.setattr(cpu_kernels, "_f32_run", count_f32)
    monkeypatch.setattr(cpu_kernels, "_int8_run", count_int8)
    return calls


@needs_kernels
@pytest.mark.parametrize("M", [1, 2])
@pytest.mark.parametrize(("N", "K"), [(48, 64), (7, 33), (130, 576)])  # rows not a multiple of 4, odd K
def test_f32_kernel_equals_f_linear(M, N, K):
    g = torch.Generator().manual_seed(N + K)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    got = cpu_kernels.f32_linear(x, w)
    assert got.shape == (M, N) and got.dtype == torch.float32
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-4)  # sums of 576 terms ~ 24


@needs_kernels
@pytest.mark.parametrize("M", [1, 2])
@pytest.mark.parametrize(("N", "K"), [(48, 64), (7, 33), (130, 576)])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_int8_kernel_equals_the_dequantized_product(M, N, K, eps):
    g = torch.Generator().manual_seed(N * K)
    x, w = torch.randn(M, K, generator=g) * 3, torch.randn(N, K, generator=g)
    q, s = quantize_rows(w, torch.float32)
    got = cpu_kernels.int8_linear(x, q, s, eps)
    xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) if eps else x  # the folded RMSNorm
    torch.testing.assert_close(got, xn @ (q.float() * s[:, None]).T, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_model_linear_takes_the_kernel_only_for_decoding(spy):
    torch.manual_seed(0)
    layer = Linear(32, 24)
    one, eight, many = torch.randn(1, 1, 32), torch.randn(2, 4, 32), torch.randn(1, 9, 32)
    with torch.no_grad():
        got = layer(one)
        assert spy["f32"] == 1 and got.shape == (1, 1, 24)
        torch.testing.assert_close(got, F.linear(one, layer.weight, layer.bias))  # the bias is added too
        got = layer(eight)  # a batch or beams of 8, one token each
        assert spy["f32"] == 2 and got.shape == (2, 4, 24)
        torch.testing.assert_close(got, F.linear(eight, layer.weight, layer.bias))
        layer(many)  # prefill: 9 rows
        layer.to(torch.bfloat16)(one.bfloat16())  # another dtype
    layer.float()(one)  # autograd on: training
    layer.weight = torch.nn.Parameter(torch.randn(32, 24).T)  # a transposed view: not contiguous
    with torch.no_grad():
        torch.testing.assert_close(layer(one), F.linear(one, layer.weight, layer.bias))
    assert spy["f32"] == 2


@needs_kernels
def test_int8_linear_takes_the_kernel_up_to_two_rows(spy):
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 24))
    x2, x3 = torch.randn(2, 1, 32), torch.randn(3, 1, 32)
    with torch.no_grad():
        two, three = layer(x2), layer(x3)  # aten's kernel from 3 rows on
    assert spy["int8"] == 1 and two.shape == (2, 1, 24) and three.shape == (3, 1, 24)
    w = layer.qweight.float() * layer.scales.float()[:, None]
    torch.testing.assert_close(two, x2 @ w.T + layer.bias, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(three, x3 @ w.T + layer.bias, atol=0.05, rtol=0.02)  # bfloat16 activations


@needs_kernels
def test_generation_with_and_without_the_kernels_is_the_same(monkeypatch, spy):
    cfg = GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, pos="rope",
                    norm="rmsnorm", mlp="swiglu", bias=False)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # peaked logits: greedy choices are not near-ties
    prompts = [[1, 2, 3, 4], [5, 6]]
    fast = generate_batch(model, prompts, max_new_tokens=20, block_size=48)
    assert spy["f32"] > 0
    monkeypatch.setattr(cpu_kernels, "ready", lambda: False)
    slow = generate_batch(model, prompts, max_new_tokens=20, block_size=48)
    assert [r.tokens for r in fast] == [r.tokens for r in slow]
    for a, b in zip(fast, slow):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


@needs_kernels
def test_quantize_folds_rms_norms_into_the_next_products(spy):
    cfg = GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32, pos="rope", norm="rmsnorm",
                    mlp="swiglu", bias=False, tie_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.h:  # norms whose weights matter
            block.ln_1.weight.uniform_(0.5, 2.0)
            block.ln_2.weight.uniform_(0.5, 2.0)
    quant = quantize(copy.deepcopy(model), "int8")
    block = quant.h[0]
    assert isinstance(block.ln_1, torch.nn.Identity) and isinstance(block.ln_2, torch.nn.Identity)
    assert isinstance(block.mlp, Int8SwiGLU) and block.mlp.gate_up.norm_eps == cfg.norm_eps
    assert isinstance(block.attn.qkv, Int8Linear) and block.attn.qkv.norm_eps == cfg.norm_eps
    assert isinstance(quant.ln_f, RMSNorm) and quant.lm_head.norm_eps == 0.0  # embeddings() ends with ln_f
    x = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)[0, -1]
        prefill = quant(x)[0, -1]  # 12 rows: PyTorch's int8 kernel, the norm in PyTorch
        assert spy["int8"] == 0
        cache = quant.new_cache(1, 12)
        quant(x[:, :-1], input_pos=torch.arange(11), cache=cache)
        decode = quant(x[:, -1:], input_pos=torch.tensor([11]), cache=cache)[0, -1]  # one row: the C kernel
        assert spy["int8"] > 0
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(prefill, want) < 0.02 and rel(decode, want) < 0.02 and rel(decode, prefill) < 0.01
    with torch.no_grad():
        assert rel(quant.embeddings(x), model.embeddings(x)) < 0.02  # the final norm is still applied


def test_quantize_leaves_norms_read_by_lora_layers_alone():
    cfg = GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32, pos="rope", norm="rmsnorm",
                    mlp="swiglu", bias=False)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    apply_lora(model, targets=["attn.qkv", "mlp.up"])
    x = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
        quant = quantize(copy.deepcopy(model), "int8")
        got = quant(x)
    block = quant.h[0]
    assert isinstance(block.ln_1, RMSNorm) and isinstance(block.ln_2, RMSNorm)  # not folded
    assert isinstance(block.attn.qkv, LoRALinear) and isinstance(block.attn.qkv.base, Int8Linear)
    assert not isinstance(block.mlp, Int8SwiGLU) and isinstance(block.mlp.gate, Int8Linear)
    assert float((got - want).norm() / want.norm()) < 0.05


def test_int8_linear_never_silently_detaches_autograd():
    """int8 is for inference: with autograd on, one row takes PyTorch's product (as three rows do), whose
    missing derivative is a loud error, never a silently detached output."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 8))
    for rows in (1, 3):
        y = layer(torch.randn(rows, 64, requires_grad=True))
        assert y.requires_grad
        with pytest.raises(RuntimeError, match="derivative for aten::_weight_int8pack_mm is not implemented"):
            y.sum().backward()


@needs_kernels
def test_the_public_kernels_refuse_what_the_c_code_cannot_take():
    w, q = torch.randn(8, 16), torch.zeros(8, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="M <= 8"):
        cpu_kernels.int8_linear(torch.zeros(9, 16), q, torch.ones(8))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.f32_linear(torch.zeros(1, 16, dtype=torch.float64), w)
    with pytest.raises(ValueError, match=r"weight: expected contiguous torch\.int8"):
        cpu_kernels.int8_linear(torch.zeros(1, 16), w, torch.ones(8))
    with pytest.raises(ValueError, match=r"weight: expected contiguous torch.float32 \(N, 16\)"):
        cpu_kernels.f32_linear(torch.zeros(1, 16), w.T)


def test_an_unwritable_home_falls_back_to_pytorch(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "file" / "home"))
    monkeypatch.setattr(cpu_kernels, "_lib", {})
    with pytest.warns(UserWarning, match="CPU kernels not built .*cannot write"):
        assert cpu_kernels.library() is None
    with torch.no_grad():
        layer = Linear(8, 4)
        torch.testing.assert_close(
            layer(torch.ones(1, 8)), F.linear(torch.ones(1, 8), layer.weight, layer.bias)
        )


def test_without_a_compiler_pytorch_kernels_run(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu_kernels, "_lib", {})
    with pytest.warns(UserWarning, match="CPU kernels not built .*no-such-cc"):
        assert cpu_kernels.library() is None
    assert not cpu_kernels.decoding(torch.zeros(1, 8), cpu_kernels.F32_ROWS)
    with torch.no_grad():
        layer = Linear(8, 4)
        torch.testing.assert_close(
            layer(torch.ones(1, 8)), F.linear(torch.ones(1, 8), layer.weight, layer.bias)
        )


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("TINYLM_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu_kernels, "_lib", {})
    assert cpu_kernels.library() is None and not cpu_kernels.decoding(torch.zeros(1, 8), cpu_kernels.F32_ROWS)


@needs_kernels
def test_a_compiled_function_calls_the_kernels_as_custom_ops(spy):
    torch.manual_seed(0)
    w = torch.randn(24, 16)
    q, s = quantize_rows(w, torch.float32)

    def step(x):
        return cpu_kernels.f32_linear(x, w) + cpu_kernels.int8_linear(x, q, s, 1e-5)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    x = torch.randn(1, 16)
    torch.testing.assert_close(compiled(x), step(x), rtol=1e-5, atol=1e-5)
    assert spy["f32"] == 2 and spy["int8"] == 2  # one call each, compiled and eager
