import math

import pytest

from tinylm.model import GPTConfig, build_model
from tinylm.train.optim import lr_at, param_groups, warmup_steps_for


def test_schedule_warms_up_then_decays_to_the_floor():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.5 * 0.9 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)
    assert warmup_steps_for(0.1, 200) == 20 and warmup_steps_for(100, 200) == 100


def test_no_decay_on_norms_biases_and_embeddings():
    model = build_model(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, pos="learned"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith("weight") and ".ln_" not in n for n in decayed)
    assert {"wte.weight", "wpe.weight", "ln_f.weight"} <= kept
    assert all(("bias" in n) or ("ln" in n) or n in ("wte.weight", "wpe.weight") for n in kept)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
