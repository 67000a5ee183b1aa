"""Attention weights recomputed from the model's own modules, the PNG grid and the interactive HTML view."""

import json
import re

import pytest
import torch
from PIL import Image

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tinylm.errors import TinylmError
from tinylm.model import GPTConfig, build_model
from tinylm.tools.attention import attention_weights, head_view_html, head_weights, heatmaps_png

CONFIGS = {
    "learned-mha": dict(pos="learned"),
    "rope-gqa": dict(pos="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu"),
    "alibi": dict(pos="alibi"),
    "postnorm-sinusoidal": dict(pos="sinusoidal", prenorm=False),
}


def _model(**fields):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, **fields)
    return build_model(config).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_weights_times_values_give_the_module_output(name):
    """softmax(q k^T / sqrt(hs) + mask) @ v through the output projection == what each attention module
    returned inside the model's own forward (SDPA), and each row is a causal distribution."""
    model = _model(**CONFIGS[name])
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    seen = []

    def hook(module, args, output):
        x, rope, mask = args[0], args[1], args[2]
        weights = head_weights(module, x, rope, mask)  # (1, H, T, T)
        nh, nkv, hs = module.n_head, module.n_kv_head, module.head_size
        v = module.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)[2]
        v = v.view(1, 12, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)  # (1, H, T, hs)
        y = (weights @ v).transpose(1, 2).reshape(1, 12, nh * hs)
        torch.testing.assert_close(module.proj(y), output, atol=1e-5, rtol=1e-4)
        seen.append(weights)

    handles = [b.attn.register_forward_hook(hook) for b in model.h]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    assert len(seen) == 2
    weights = attention_weights(model, ids[0].tolist())
    assert weights.shape == (2, 4, 12, 12)
    torch.testing.assert_close(weights, torch.cat(seen).float())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 12))
    assert weights.triu(diagonal=1).abs().max() == 0  # no query sees a later key
    assert weights[:, :, 0, 0].eq(1).all()


def test_weights_by_hand_for_one_head():
    """Layer 0, head 1 of a learned-position GPT, written out: q and k from the qkv weight rows."""
    model = _model(pos="learned")
    ids = torch.tensor([3, 14, 15, 9, 2, 6])
    with torch.no_grad():
        x = model.h[0].ln_1(model.wte(ids) + model.wpe(torch.arange(6)))  # (T, C)
        W, b = model.h[0].attn.qkv.weight, model.h[0].attn.qkv.bias
        q = x @ W[8:16].T + b[8:16]  # head 1 of 4, head size 8
        k = x @ W[32 + 8 : 32 + 16].T + b[32 + 8 : 32 + 16]
        scores = q @ k.T / 8**0.5 + torch.full((6, 6), float("-inf")).triu(1)
    torch.testing.assert_close(attention_weights(model, ids)[0, 1], scores.softmax(-1), atol=1e-6, rtol=1e-5)


def test_gru_has_no_attention():
    gru = build_model(GPTConfig(kind="gru", vocab_size=50, n_layer=1, n_embd=16))
    with pytest.raises(TinylmError, match="GRULM"):
        attention_weights(gru, [1, 2, 3])


def test_heatmap_png_is_an_image(tmp_path):
    model = _model(pos="rope")
    weights = attention_weights(model, list(range(10)))
    tokens = [f"t{i}" for i in range(10)]
    grid = Image.open(heatmaps_png(weights, tokens, tmp_path / "grid.png", layer=1))
    one = Image.open(heatmaps_png(weights, tokens, tmp_path / "one.png", layer=0, head=2))
    assert grid.format == one.format == "PNG"
    assert grid.width > 800 and 250 < grid.height < grid.width  # four heads in a row
    assert 400 < one.width < 1000 and 400 < one.height < 1000


def test_html_is_self_contained_and_escapes_tokens():
    weights = attention_weights(_model(), [1, 2, 3])
    page = head_view_html(weights, ["a", "</script><img src=x onerror=alert(1)>", "c\n"], layer=1)
    assert "</script><img" not in page  # the data cannot close its script element
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "@import" not in page
    data = json.loads(re.search(r'id="attn-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    assert data["tokens"][2] == "c↵" and data["layer"] == 1 and data["heads"] == [0, 1, 2, 3]
    assert torch.allclose(torch.tensor(data["weights"], dtype=torch.float64), weights.double(), atol=5e-5)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_hovering_a_token_shows_its_row_of_weights_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    model = _model(pos="rope", n_kv_head=2)
    weights = attention_weights(model, list(range(9)))
    page_file = tmp_path / "view.html"
    page_file.write_text(head_view_html(weights, [f"tok{i}" for i in range(9)], layer=0), encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 640, "height": 420})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())

        def shown() -> list[float]:
            values = page.eval_on_selector_all("#right .tok .w", "els => els.map(e => e.dataset.weight)")
            return [float(v) for v in values]

        page.select_option("#layer", "1")
        page.click("#none")
        page.click('#heads .head[data-head="3"]')
        page.hover('#left .tok[data-i="5"]')
        row5 = shown()
        assert row5 == pytest.approx(weights[1, 3, 5].tolist(), abs=1e-4)
        assert "tok5" in page.inner_text("#readout") and page.locator("#lines line").count() > 0
        page.hover('#left .tok[data-i="8"]')
        row8 = shown()
        assert row8 == pytest.approx(weights[1, 3, 8].tolist(), abs=1e-4) and row8 != row5
        page.click('#heads .head[data-head="0"]')  # two heads: their mean
        page.hover('#left .tok[data-i="2"]')
        assert shown() == pytest.approx(weights[1, [0, 3], 2].mean(0).tolist(), abs=1e-4)
        page.screenshot(path=str(tmp_path / "view.png"))
        browser.close()
    assert not errors
