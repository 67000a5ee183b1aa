"""The memory estimate: its formulas, its parts, and its agreement with measured training peaks."""

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_config, write_config
from tinylm.config import load_config
from tinylm.errors import TinylmError
from tinylm.footprint import (
    GiB,
    Workload,
    fmt_bytes,
    inference_memory,
    largest_batch,
    layer_activations,
    parse_size,
    training_memory,
)
from tinylm.model import GPTConfig, build_model, count_params
from tinylm.tools.memory import estimate_report, resolve_subject
from tinylm.train.fits import check_fits, measure_training_peak

SMALL = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64, bias=False)


def test_sizes_parse_and_print():
    assert parse_size("80GiB") == 80 * 2**30 == parse_size("80 g")
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1e9") == 10**9 and parse_size("100") == 100
    with pytest.raises(TinylmError, match="80 gigs"):
        parse_size("80 gigs")
    assert fmt_bytes(1536) == "1.50 KiB" and fmt_bytes(3 * GiB) == "3.00 GiB" and fmt_bytes(12) == "12 B"


def test_per_layer_activations_follow_the_formula():
    """fp32, LayerNorm, GELU, fused attention: 4 bytes x N x (8C + 2F) + norm stats + logsumexp per layer."""
    c = GPTConfig(**SMALL)
    B, T = 8, 64
    N, C, F = B * T, c.n_embd, c.mlp_size
    layer = layer_activations(c, Workload(B, T), kernel="fused")
    assert layer["ln_1"] == layer["ln_2"] == 4 * N * C + 8 * N  # input, mean and rstd
    assert layer["attn.qkv"] == 4 * N * C  # its input
    assert layer["attn.sdpa"] == 4 * N * 3 * C + 4 * N * C + 4 * B * c.n_head * T  # q,k,v; out; lse
    assert layer["mlp.gelu"] == layer["mlp.proj"] == 4 * N * F
    assert sum(layer.values()) == 4 * N * (8 * C + 2 * F) + 16 * N + 4 * B * c.n_head * T


def test_math_attention_keeps_the_scores_fused_does_not():
    c = GPTConfig(**SMALL)
    for T in (32, 64):
        fused = sum(layer_activations(c, Workload(2, T), kernel="fused").values())
        math = sum(layer_activations(c, Workload(2, T), kernel="math").values())
        scores, lse = 4 * 2 * c.n_head * T * T, 4 * 2 * c.n_head * T  # (B, H, T, T) and (B, H, T) fp32
        assert math - fused == scores - lse  # both keep q, k, v and the output; math the probabilities
    dropout = GPTConfig(**{**SMALL, "dropout": 0.1})
    assert training_memory(dropout, Workload(2, 64, device="cpu")).kernel == "math"  # CPU flash: no dropout


def test_parts_and_precisions():
    c = GPTConfig(**SMALL)
    params = count_params(build_model(c))
    fp32 = training_memory(c, Workload(4, 64, "32-true"))
    mixed = training_memory(c, Workload(4, 64, "bf16-mixed"))
    true16 = training_memory(c, Workload(4, 64, "bf16-true"))
    assert fp32.params == params and fp32.weights == 4 * params  # no buffers with learned positions
    assert fp32.gradients == mixed.gradients == 4 * params and fp32.optimizer == mixed.optimizer == 8 * params
    assert true16.weights == 2 * params and true16.gradients == 2 * params and true16.optimizer == 4 * params
    linear_weights = (
        params - c.vocab_size * c.n_embd - c.block_size * c.n_embd - (2 * c.n_layer + 1) * c.n_embd
    )
    assert mixed.autocast_copies == 2 * (linear_weights + c.vocab_size * c.n_embd)  # + the tied lm_head
    assert fp32.autocast_copies == true16.autocast_copies == 0
    assert fp32.loss_buffers == 12 * 4 * 64 * c.vocab_size
    assert true16.peak < mixed.peak < fp32.peak


def test_frozen_parameters_need_no_gradient_or_state():
    c = GPTConfig(**SMALL)
    full = training_memory(c, Workload(4, 64))
    frozen = training_memory(c, Workload(4, 64), trainable=1000)
    assert frozen.gradients == 4 * 1000 and frozen.optimizer == 8 * 1000 and frozen.peak < full.peak


def test_the_seed_rule_of_thumb_for_a_1b_model():
    """The seed: ~24 GB to train 1B parameters in fp32, 16 bytes each for weights, gradients and AdamW."""
    c = GPTConfig(vocab_size=32000, block_size=2048, n_layer=22, n_head=16, n_embd=2048, mlp="swiglu",
                  intermediate_size=5632, norm="rmsnorm", pos="rope", bias=False)  # fmt: skip
    one = training_memory(c, Workload(1, 1024, "32-true", "cuda"))
    assert 0.9e9 < one.params < 1.2e9
    assert one.gradients + one.optimizer == 12 * one.params and one.weights >= 4 * one.params
    # batch 1: activations are freed as gradients arrive, the peak is the end of the backward (~16 B/param)
    assert one.peak_at == "backward of wte" and 16 * one.params < one.peak < 17 * one.params
    two = training_memory(c, Workload(2, 1024, "32-true", "cuda"))
    assert 20e9 < two.peak < 28e9  # about the seed's 24 GB once activations count


def test_kv_cache_is_what_the_model_allocates():
    c = GPTConfig(**{**SMALL, "n_kv_head": 2, "pos": "rope"})
    model = build_model(c)
    cache = model.new_cache(3, 40)
    allocated = sum(t.numel() * t.element_size() for pair in cache.layers for t in pair)
    assert inference_memory(c, batch_size=3, seq_len=40, dtype="fp32").kv_cache == allocated
    assert inference_memory(c, batch_size=3, seq_len=40, dtype="bf16").kv_cache == allocated // 2
    fp32, int8 = (inference_memory(c, batch_size=1, seq_len=8, dtype=d) for d in ("fp32", "int8"))
    assert fp32.weights == 4 * (count_params(model) + sum(b.numel() for b in model.buffers()))
    assert fp32.weights / 4.5 < int8.weights < fp32.weights / 3


def test_largest_batch_searches_the_boundary():
    assert largest_batch(lambda b: 100 + 7 * b, 1000) == 128
    assert largest_batch(lambda b: 100 + 7 * b, 100) == 0
    assert largest_batch(lambda b: b, 10**9, limit=64) == 64


@pytest.mark.parametrize(
    "fields, work",
    [
        (dict(SMALL, pos="learned"), Workload(8, 64, "32-true")),
        (dict(SMALL, pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2), Workload(4, 64, "bf16-mixed")),
    ],
    ids=["fp32-gelu", "bf16-mixed-swiglu-gqa"],
)
def test_estimate_is_within_25_percent_of_the_measured_cpu_peak(fields, work):
    config = GPTConfig(**fields)
    measured = measure_training_peak(config, work)
    estimate = training_memory(config, work).peak
    assert abs(estimate / measured - 1) <= 0.25, (fmt_bytes(estimate), fmt_bytes(measured))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "fields, work",
    [
        (dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False, block_size=256),
         Workload(64, 256, "bf16-mixed", "cuda")),
        (dict(vocab_size=50257, n_layer=4, n_head=12, n_embd=768, block_size=512), Workload(8, 512, "32-true", "cuda")),
        (dict(vocab_size=49152, n_layer=6, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536, pos="rope",
              norm="rmsnorm", mlp="swiglu", bias=False, block_size=512), Workload(8, 512, "bf16-true", "cuda")),
    ],
    ids=["shakespeare-bf16-mixed", "gpt2-4-layers-fp32", "smollm2-6-layers-bf16-true"],
)  # fmt: skip
def test_estimate_is_within_15_percent_of_max_memory_allocated_on_cuda(fields, work):
    config = GPTConfig(**fields)
    measured = measure_training_peak(config, work)
    estimate = training_memory(config, work).peak
    assert abs(estimate / measured - 1) <= 0.15, (fmt_bytes(estimate), fmt_bytes(measured))


def test_check_fits_prints_and_refuses_with_the_numbers(tmp_path, qa_file, capsys):
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, qa_file)))
    model = build_model(cfg.model_config_for(30))
    fabric = SimpleNamespace(device=torch.device("cpu"), world_size=1, is_global_zero=True)
    est = check_fits(cfg, model, fabric)
    assert est.params == count_params(model)
    assert "memory estimate:" in capsys.readouterr().err
    huge = load_config(write_config(tmp_path, tiny_config(tmp_path, qa_file, train={"batch_size": 10**6})))
    with pytest.raises(TinylmError) as e:
        check_fits(huge, model, fabric)
    message = str(e.value)
    assert "does not fit in memory" in message and "batch 1000000 x 32 tokens" in message
    assert "available RAM" in message and "the largest train.batch_size that fits is" in message


def test_check_fits_takes_gru_lora_and_shares_ram_among_cpu_processes(tmp_path, qa_file, monkeypatch):
    from tinylm.train import fits
    from tinylm.train.lora import apply_lora

    lora_cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, qa_file, train={"lora": {"r": 2}})))
    model = build_model(lora_cfg.model_config_for(30))
    apply_lora(model, r=2, alpha=4.0, dropout=0.0, targets=["attn.qkv"])
    one = SimpleNamespace(device=torch.device("cpu"), world_size=1, is_global_zero=False)
    est = check_fits(lora_cfg, model, one)
    assert est.trainable == count_params(model, trainable_only=True) < est.params
    gru_cfg = load_config(
        write_config(
            tmp_path, tiny_config(tmp_path, qa_file, model={"kind": "gru", "n_layer": 2, "n_embd": 32})
        )
    )
    gru = build_model(gru_cfg.model_config_for(30))
    peak = check_fits(gru_cfg, gru, one).peak
    monkeypatch.setattr(fits, "device_memory", lambda kind: (int(1.5 * peak), "available RAM"))
    assert check_fits(gru_cfg, gru, one).kernel == "none"  # one process fits in 1.5x its peak
    two = SimpleNamespace(device=torch.device("cpu"), world_size=2, is_global_zero=False)
    with pytest.raises(TinylmError, match="does not fit in memory"):  # two processes on one machine do not
        check_fits(gru_cfg, gru, two)


def test_report_for_a_seed_trainer_config_with_frozen_embeddings(tmp_path):
    """The seed's trainer_config.yaml schema, model_name a checkpoint dir: its batch, length and freezing."""
    import json

    import yaml

    from tinylm.checkpoint import save_checkpoint
    from tinylm.tokenizers import train_tokenizer

    tok = train_tokenizer("char", ["what is two plus two? four"])
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "base", model=build_model(config), config=config, tokenizer=tok, meta={})
    data = {"train": [{"Question": "what is two plus two?", "Answer": "four"}] * 4}
    (tmp_path / "data.json").write_text(json.dumps(data))
    seed = {
        "data": {"batch_size": 3, "data_dir": str(tmp_path / "data.json"), "max_length": 48},
        "model_name": str(tmp_path / "base"),
        "model_params": {"do_freeze": True, "freeze_emb": True, "learning_rate": 1e-4},
        "trainer": {"params": {"accelerator": "cpu", "precision": "bf16", "max_epochs": 1}},
    }
    path = tmp_path / "trainer_config.yaml"
    path.write_text(yaml.safe_dump(seed))
    subject = resolve_subject(path)
    assert (subject.batch_size, subject.seq_len, subject.precision, subject.device) == (
        3,
        48,
        "bf16-mixed",
        "cpu",
    )
    emb = tok.vocab_size * 16 + 64 * 16
    assert subject.params == count_params(build_model(config)) and subject.trainable == subject.params - emb
    report = estimate_report(subject, precision="bf16", budget=4 * GiB)
    assert list(report["training"]) == ["bf16-mixed", "bf16-true"] and list(report["inference"]) == ["bf16"]
    row = report["training"]["bf16-mixed"]
    assert row["gradients"] == 4 * subject.trainable and row["largest_batch"] > 3
    assert report["device_memory"] == 4 * GiB and report["config_precision"] == "bf16-mixed"
    with pytest.raises(TinylmError, match=r"--seq-len: expected 1\.\.64"):
        estimate_report(subject, seq_len=65)
