import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tinylm.errors import TinylmError
from tinylm.model import GPT, GPTConfig
from tinylm.train.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from tinylm.train.optim import param_groups

CONFIG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
LLAMA = dataclasses.replace(
    CONFIG, n_kv_head=1, mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False
)


def tiny(config: GPTConfig = CONFIG) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randint(0, 50, (4, 13), generator=torch.Generator().manual_seed(1))
    return data[:, :-1], data[:, 1:]


def train(model: GPT, steps: int) -> list[float]:
    x, y = batch()
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=3e-2)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_the_wrapped_model_equals_the_original_at_init():
    model = tiny()
    x, _ = batch()
    expected = model(x)
    trainable = apply_lora(model, r=4, alpha=8.0)
    assert isinstance(model.h[0].attn.qkv, LoRALinear) and isinstance(model.h[1].attn.proj, LoRALinear)
    assert not isinstance(model.h[0].mlp.fc, LoRALinear)
    assert torch.equal(model(x), expected)
    # per layer: qkv A (4, 16) + B (48, 4), proj A (4, 16) + B (16, 4)
    assert trainable == 2 * (64 + 192 + 64 + 64) == sum(t.numel() for t in lora_state_dict(model).values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora_state_dict(model))


def test_training_moves_only_the_adapters_and_lowers_the_loss():
    model = tiny()
    apply_lora(model, r=4, alpha=8.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train(model, steps=10)
    assert losses[-1] < losses[0] - 0.05
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.endswith(("lora_A", "lora_B")), name


@pytest.mark.parametrize(
    ("config", "targets"),
    [(CONFIG, ("attn.qkv", "attn.proj")), (LLAMA, ("qkv", "proj", "gate", "up", "down", "lm_head"))],
)
def test_merge_gives_the_same_logits_and_the_original_state_dict(config, targets):
    original = tiny(config).state_dict()
    model = tiny(config)
    apply_lora(model, r=4, alpha=8.0, targets=targets)
    train(model, steps=3)
    x, _ = batch()
    with torch.no_grad():
        expected = model(x)
        merged = merge_lora(model)
        assert merged is model and not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        state = model.state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in original.items()}
        assert not torch.equal(state["h.0.attn.qkv.weight"], original["h.0.attn.qkv.weight"])
        fresh = GPT(config).eval()
        fresh.load_state_dict(state, strict=True)
        torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)


def test_targets_match_at_a_name_boundary():
    model = tiny()
    apply_lora(model, targets=("proj",))
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {f"h.{i}.{m}.proj" for i in (0, 1) for m in ("attn", "mlp")}
    assert sorted(lora_state_dict(model)) == sorted(f"{n}.lora_{ab}" for n in wrapped for ab in "AB")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(targets=("attn.qkv", "attn.qvk")), "'attn.qvk' matches no Linear"),
        (dict(targets=("ttn.qkv",)), "'ttn.qkv' matches no Linear"),
        (dict(targets=()), "no target given"),
        (dict(targets=("lm_head",)), "lm_head shares its weight with wte.weight"),
        (dict(r=0), "r=0 must be >= 1"),
    ],
)
def test_bad_arguments_raise_before_changing_the_model(kwargs, expected):
    model = tiny()
    with pytest.raises(TinylmError, match=expected) as err:
        apply_lora(model, **kwargs)
    if "targets" in kwargs:
        assert "h.N.attn.qkv, h.N.attn.proj, h.N.mlp.fc, h.N.mlp.proj, lm_head" in str(err.value)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_applying_twice_raises():
    model = tiny()
    apply_lora(model)
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(TinylmError, match="already has LoRA adapters"):
        apply_lora(model)
    assert model.state_dict().keys() == snapshot.keys()
