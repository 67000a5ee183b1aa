import pytest
import torch

from tinylm.errors import TinylmError
from tinylm.model import GPT, GPTConfig
from tinylm.train.freeze import GROUPS, apply_freezing, describe, group_of, matches
from tinylm.train.optim import param_groups

NONE = dict.fromkeys(GROUPS, False)
ALL = dict.fromkeys(GROUPS, True)
VARIANTS = {
    "gpt2": {},
    "llama": dict(mlp="swiglu", norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False),
}


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **overrides))


def trainable_names(model: GPT) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_group_of_reads_the_gpt_names():
    assert group_of("wte.weight") == group_of("wpe.weight") == "emb"
    assert group_of("h.0.ln_1.weight") == group_of("h.1.ln_2.bias") == group_of("ln_f.weight") == "ln"
    assert group_of("h.0.attn.qkv.weight") == group_of("h.11.attn.proj.bias") == "attn"
    assert group_of("h.0.attn.qkv.lora_A") == "attn"
    assert group_of("h.0.mlp.fc.weight") == group_of("h.0.mlp.down.weight") == "ff"
    assert group_of("lm_head.weight") == group_of("gru.weight_ih_l0") == "other"


def test_groups_of_the_untied_swiglu_rmsnorm_variant():
    names = [n for n, _ in tiny(**VARIANTS["llama"]).named_parameters()]
    by_group = {g: sorted(n for n in names if group_of(n) == g) for g in GROUPS}
    assert by_group == {
        "emb": ["wte.weight"],
        "ln": [f"h.{i}.ln_{j}.weight" for i in (0, 1) for j in (1, 2)] + ["ln_f.weight"],
        "attn": [f"h.{i}.attn.{m}.weight" for i in (0, 1) for m in ("proj", "qkv")],
        "ff": [f"h.{i}.mlp.{m}.weight" for i in (0, 1) for m in ("down", "gate", "up")],
        "other": ["lm_head.weight"],
    }


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("group", GROUPS)
def test_each_flag_freezes_exactly_its_group(variant, group):
    model = tiny(**VARIANTS[variant])
    names = {n for n, _ in model.named_parameters()}
    in_group = {n for n in names if group_of(n) == group}
    assert in_group or (group == "other" and variant == "gpt2")  # the tied lm_head is wte.weight
    apply_freezing(model, **{**NONE, group: True})
    assert trainable_names(model) == names - in_group


def test_freezing_the_embedding_freezes_the_tied_lm_head():
    model = tiny()
    counts = apply_freezing(model, **{**NONE, "emb": True})
    assert model.lm_head.weight is model.wte.weight and not model.lm_head.weight.requires_grad
    # 2 layers of (ln 32 + qkv 816 + proj 272 + ln 32 + fc 1088 + proj 1040) + ln_f 32; wte 800 + wpe 256
    assert counts == {"trainable": 6592, "total": 7648}
    assert describe(model) == "trainable 6,592 / total 7,648 (86.2%)"


def test_counts_of_the_untied_model_include_the_lm_head():
    model = tiny(tie_embeddings=False)
    assert apply_freezing(model, **NONE) == {"trainable": 8448, "total": 8448}
    assert apply_freezing(model, **{**NONE, "other": True}) == {"trainable": 7648, "total": 8448}
    assert describe(model) == "trainable 7,648 / total 8,448 (90.5%)"


def test_patterns_are_globs_or_substrings():
    assert matches("h.5.attn.qkv.weight", "h.5.*") and matches("h.5.attn.qkv.weight", "*.qkv.*")
    assert matches("h.11.mlp.fc.bias", "h.11.") and matches("h.11.mlp.fc.bias", "mlp.fc")
    assert not matches("h.11.mlp.fc.bias", "h.1.") and not matches("h.1.mlp.fc.bias", "h.1*.attn")


def test_keep_patterns_stay_trainable_in_frozen_groups():
    model = tiny()
    apply_freezing(model, **ALL, keep=["h.1.*", "ln_f."])
    assert trainable_names(model) == {
        n for n, _ in model.named_parameters() if n.startswith(("h.1.", "ln_f."))
    }

    model = tiny()
    apply_freezing(model, **{**NONE, "attn": True}, keep=["attn.qkv"])
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if ".attn.proj." not in n}


def test_a_pattern_matching_nothing_raises_naming_it_and_freezes_nothing():
    model = tiny()
    with pytest.raises(TinylmError) as err:
        apply_freezing(model, **ALL, keep=["h.0.*", "layers.5", "transformer.h.*"])
    message = str(err.value)
    assert "'layers.5'" in message and "'transformer.h.*'" in message and "'h.0.*'" not in message
    assert "wte.weight" in message and "h.0.attn.qkv.weight" in message
    assert all(p.requires_grad for p in model.parameters())


def test_an_optimizer_step_moves_only_trainable_parameters():
    model = tiny(tie_embeddings=False)
    apply_freezing(model, **{**NONE, "emb": True, "attn": True}, keep=["h.1.attn.*"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    idx = torch.randint(0, 50, (2, 8))
    model(idx).float().logsumexp(-1).mean().backward()
    optimizer.step()
    trainable = trainable_names(model)
    assert trainable == {n for n in before if group_of(n) not in ("emb", "attn") or n.startswith("h.1.attn.")}
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trainable), name
