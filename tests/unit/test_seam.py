"""The seam between tinylm's GPT and a transformers model is one Protocol, `tinylm.model.CausalLM`: both models
satisfy it, and no module outside the adapter (hf_model.py) asks whether a model is an `HFCausalLM`."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from tinylm.hf_model import HFCausalLM
from tinylm.model import GPT, GRULM, CausalLM, GPTConfig

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tinylm"
ADAPTER = PACKAGE / "hf_model.py"


def class_checks(source: str, name: str = "HFCausalLM") -> list[int]:
    """The lines that test a value against the class `name`: isinstance/issubclass (a tuple or union of
    classes included), a tuple of classes that holds it (to pass to isinstance later), `type(x) is name`,
    and `case name(...)`. Annotations (`model: GPT | HFCausalLM`) and calls (`name.from_pretrained`) are not
    class checks."""

    def names(node: ast.AST) -> set[str]:
        return {
            n.id if isinstance(n, ast.Name) else n.attr
            for n in ast.walk(node)
            if isinstance(n, ast.Name | ast.Attribute)
        }

    found = set()
    for node in ast.walk(ast.parse(source)):
        checked: list[ast.AST] = []
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            checked = node.args[1:2]
        elif isinstance(node, ast.Tuple):
            checked = [e for e in node.elts if isinstance(e, ast.Name | ast.Attribute)]
        elif isinstance(node, ast.Compare):
            checked = node.comparators
        elif isinstance(node, ast.MatchClass):
            checked = [node.cls]
        if any(name in names(c) for c in checked):
            found.add(node.lineno)
    return sorted(found)


def test_the_scan_finds_every_way_of_asking_for_the_class():
    source = """
def f(model: GPT | HFCausalLM) -> HFCausalLM:
    m = HFCausalLM.from_pretrained(path)
    a = isinstance(model, HFCausalLM)
    b = isinstance(model, (GPT, hf_model.HFCausalLM))
    c = isinstance(model, GPT | HFCausalLM)
    CACHED = (GPT, HFCausalLM)
    d = type(model) is HFCausalLM
    match model:
        case HFCausalLM():
            pass
"""
    assert class_checks(source) == [4, 5, 6, 7, 8, 10]


def test_no_module_but_the_adapter_asks_whether_a_model_is_an_HFCausalLM():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != ADAPTER
        for line in class_checks(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "ask the model's CausalLM capabilities (tinylm.model.CausalLM), not its class"


def _tiny_gpt() -> GPT:
    return GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, pos="rope"))


def _tiny_hf() -> HFCausalLM:
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    cfg = GPTNeoConfig(vocab_size=32, max_position_embeddings=16, hidden_size=16, num_layers=2, num_heads=2,
                       attention_types=[[["global", "local"], 1]], window_size=4, intermediate_size=32)  # fmt: skip
    return HFCausalLM(GPTNeoForCausalLM(cfg)).eval()


@pytest.mark.parametrize("build", [_tiny_gpt, _tiny_hf], ids=["gpt", "transformers"])
def test_both_models_are_a_CausalLM_whose_methods_take_the_protocol_arguments(build):
    model = build()
    assert isinstance(model, CausalLM)
    idx = torch.zeros(1, 3, dtype=torch.long)
    for method in ("forward", "new_cache", "embeddings"):
        wanted = inspect.signature(getattr(CausalLM, method))
        keywords = {n: None for n, p in wanted.parameters.items() if p.kind == p.KEYWORD_ONLY}
        inspect.signature(getattr(model, method)).bind(
            idx, *([1] if method == "new_cache" else []), **keywords
        )
    assert model.config.vocab_size == 32 and model.config.block_size == 16 and model.config.n_embd == 16
    assert isinstance(model.takes_positions, bool) and isinstance(model.static_cache, bool)


def test_the_capabilities_tell_the_models_apart():
    gpt, hf = _tiny_gpt(), _tiny_hf()
    assert gpt.takes_positions and gpt.static_cache
    assert gpt.beam_search is None and gpt.save_pretrained is None  # tinylm's beam search and checkpoint
    assert hf.takes_positions and not hf.static_cache  # GPT-Neo takes position ids; transformers' cache
    assert callable(hf.beam_search) and callable(hf.save_pretrained)


def test_the_GRU_baseline_has_no_cache_and_is_no_CausalLM():
    assert not isinstance(GRULM(GPTConfig(kind="gru", vocab_size=32, n_layer=1, n_embd=16)), CausalLM)
