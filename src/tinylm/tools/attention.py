"""Attention maps of a tinylm GPT: softmax(q k^T / sqrt(head_size) + mask) for every layer and head, drawn
as a PNG grid of heatmaps (one per head) or a self-contained interactive HTML head view in the manner of
BertViz (pick a layer and heads, hover a token to see what it attends to, with the weights).

The model attends through SDPA, which never materialises the weights. `attention_weights` therefore runs
the model's ordinary forward with a forward pre-hook on each attention module and, from the inputs the
module receives (its normed input, RoPE tables and mask), recomputes q and k with the module's own `qkv`
projection and the model's `apply_rope`, then the weights with the mask the model passed (causal, packed
segments or the ALiBi bias). `model.py` stays as it is; a unit test checks that these weights times v,
through the module's output projection, give exactly what the module returned.

What this module does not do: no attention of the GRU baseline (it has none), no cached decoding (one
plain forward over the text), no gradients or attribution methods, no model view of all layers at once.
"""

from __future__ import annotations

import html
import inspect
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from tinylm.errors import TinylmError
from tinylm.files import check_output_dir, kind_of, written_aside
from tinylm.model import GPT, CausalSelfAttention, apply_rope
from tinylm.tools.tokenize import visible

MAX_TOKENS = 512  # the HTML view embeds layers x heads x T x T weights; beyond this it grows past ~100 MB


@torch.no_grad()
def attention_weights(model: GPT, ids: list[int] | Tensor) -> Tensor:
    """Attention weights (n_layer, n_head, T, T), float32 on the CPU, for one sequence of token ids.

    Row i of head h in layer l is the distribution query token i puts over the key tokens j <= i.
    """
    if not isinstance(model, GPT):
        raise TinylmError(f"attention maps need a GPT; this model is a {type(model).__name__} (no attention)")
    idx = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
    if idx.size(1) == 0:
        raise TinylmError("the text encodes to no tokens; give some text")
    found: list[Tensor] = []

    def hook(module: CausalSelfAttention, args: tuple, kwargs: dict) -> None:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        x, rope, mask = bound.arguments["x"], bound.arguments["rope"], bound.arguments["mask"]
        found.append(head_weights(module, x, rope, mask)[0].float().cpu())

    handles = [b.attn.register_forward_pre_hook(hook, with_kwargs=True) for b in model.h]
    was_training = model.training
    try:
        model.eval()
        model(idx)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return torch.stack(found)  # (L, H, T, T)


def head_weights(
    attn: CausalSelfAttention, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None
) -> Tensor:
    """(B, n_head, T, T) weights of `attn` for its input x (B, T, C), the way its forward computes them:
    the fused qkv projection, RoPE, k heads repeated for grouped queries, scores scaled by 1/sqrt(hs)
    with the mask added (None: causal; bool: True may attend; float: an additive bias), softmax in fp32."""
    B, T, _ = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
    q, k, _v = attn.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    k = k.repeat_interleave(nh // nkv, dim=1)  # kv head i serves query heads i*g .. (i+1)*g - 1
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
    if mask is None:
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    return scores.softmax(dim=-1)


# ----------------------------------------------------------------------------------------------------------
# PNG: one heatmap per head


def heatmaps_png(
    weights: Tensor, tokens: list[str], out: str | Path, *, layer: int, head: int | None = None
) -> Path:
    """Heatmaps of `layer`'s heads (or of one `head`) to a PNG: rows are queries, columns keys."""
    from matplotlib.figure import Figure

    heads = [head] if head is not None else list(range(weights.size(1)))
    cols = min(len(heads), 4)
    rows = math.ceil(len(heads) / cols)
    T = len(tokens)
    side = 5.5 if len(heads) == 1 else 3.2
    fig = Figure(figsize=(side * cols + 0.8, side * rows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    labels = [visible(t) for t in tokens]
    image = None
    for n, ax in enumerate(axes.flat):
        if n >= len(heads):
            ax.set_axis_off()
            continue
        h = heads[n]
        image = ax.imshow(
            weights[layer, h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        ax.set_title(f"head {h}")
        if T <= 40:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(T), labels, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"layer {layer}: query (row) attends to key (column)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# ----------------------------------------------------------------------------------------------------------
# HTML: the interactive head view


def head_view_html(
    weights: Tensor, tokens: list[str], *, layer: int = 0, heads: list[int] | None = None, title: str = ""
) -> str:
    """One self-contained HTML page (inline CSS and JS, no network) with every layer's weights embedded.

    Choose the layer in a menu and heads with their coloured buttons; hovering a token on the left draws
    its attention to the tokens on the right and writes, beside each, the weight (the mean over the chosen
    heads when there are several). Weights are rounded to 4 decimals.
    """
    data = {
        "tokens": [visible(t) for t in tokens],
        "weights": weights.double().mul(1e4).round().div(1e4).tolist(),
        "layer": layer,
        "heads": list(range(weights.size(1))) if heads is None else heads,
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no early </script>
    return _PAGE.replace("__TITLE__", html.escape(title or "attention")).replace("__DATA__", payload)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
 #controls { margin: 8px 0; display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
 .head { border: 2px solid var(--c); border-radius: 4px; padding: 1px 7px; background: #fff; cursor: pointer; }
 .head.on { background: var(--c); color: #fff; }
 #readout { min-height: 1.4em; margin: 6px 0; font-size: 14px; }
 #view { display: flex; align-items: flex-start; }
 .col { display: flex; flex-direction: column; }
 .tok { height: 22px; line-height: 22px; padding: 0 6px; white-space: pre; font-family: monospace;
        border-radius: 3px; display: flex; gap: 8px; }
 #left .tok { justify-content: flex-end; cursor: pointer; }
 #left .tok.hover { outline: 2px solid #333; }
 .w { font-size: 11px; color: #444; min-width: 3.5em; }
 svg { flex: none; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div id="controls">
 <label>layer <select id="layer"></select></label>
 <span>heads</span><span id="heads"></span>
 <button id="all">all</button><button id="none">none</button>
</div>
<div id="readout">hover a token on the left</div>
<div id="view"><div class="col" id="left"></div><svg id="lines" width="160"></svg><div class="col" id="right"></div></div>
<script type="application/json" id="attn-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("attn-data").textContent);
const T = data.tokens.length, L = data.weights.length, H = data.weights[0].length, ROW = 22;
const color = h => `hsl(${Math.round(h * 360 / H)}, 70%, 45%)`;
const rgba = (h, a) => `hsla(${Math.round(h * 360 / H)}, 70%, 45%, ${a})`;  // a head's colour, faded
let layer = data.layer, selected = new Set(data.heads), hovered = null;
const layerSel = document.getElementById("layer"), svg = document.getElementById("lines");
for (let l = 0; l < L; l++) layerSel.add(new Option(String(l), String(l)));
layerSel.value = String(layer);
layerSel.onchange = () => { layer = Number(layerSel.value); draw(); };
const headBox = document.getElementById("heads");
for (let h = 0; h < H; h++) {
  const b = document.createElement("button");
  b.className = "head"; b.textContent = String(h); b.dataset.head = String(h);
  b.style.setProperty("--c", color(h));
  b.onclick = () => { selected.has(h) ? selected.delete(h) : selected.add(h); draw(); };
  headBox.appendChild(b);
}
document.getElementById("all").onclick = () => { selected = new Set([...Array(H).keys()]); draw(); };
document.getElementById("none").onclick = () => { selected = new Set(); draw(); };
const left = document.getElementById("left"), right = document.getElementById("right");
function cell(side, i) {
  const d = document.createElement("div");
  d.className = "tok"; d.dataset.i = String(i);
  const t = document.createElement("span"); t.className = "t"; t.textContent = data.tokens[i];
  if (side === "right") {
    const w = document.createElement("span"); w.className = "w"; d.append(t, w);
  } else { d.append(t); }
  return d;
}
for (let i = 0; i < T; i++) {
  const l = cell("left", i); left.appendChild(l);
  l.onmouseenter = () => { hovered = i; draw(); };
  l.onmouseleave = () => { hovered = null; draw(); };
  right.appendChild(cell("right", i));
}
svg.setAttribute("height", String(T * ROW));
function line(i, j, h, w) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", "line");
  e.setAttribute("x1", "2"); e.setAttribute("y1", String(i * ROW + ROW / 2));
  e.setAttribute("x2", "158"); e.setAttribute("y2", String(j * ROW + ROW / 2));
  e.setAttribute("stroke", color(h)); e.setAttribute("stroke-opacity", String(w));
  e.setAttribute("stroke-width", "2");
  svg.appendChild(e);
}
function draw() {
  for (const b of headBox.children) b.classList.toggle("on", selected.has(Number(b.dataset.head)));
  svg.replaceChildren();
  const heads = [...selected].sort((a, b) => a - b), W = data.weights[layer];
  const rows = hovered === null ? (T * T * heads.length <= 40000 ? [...Array(T).keys()] : []) : [hovered];
  for (const h of heads) for (const i of rows) for (let j = 0; j <= i; j++) if (W[h][i][j] > 0.01) line(i, j, h, W[h][i][j]);
  for (const l of left.children) l.classList.toggle("hover", Number(l.dataset.i) === hovered);
  let best = null;
  for (const r of right.children) {
    const j = Number(r.dataset.i), w = r.querySelector(".w");
    if (hovered === null || heads.length === 0) {
      w.textContent = ""; delete w.dataset.weight; r.style.background = ""; continue;
    }
    const v = heads.reduce((s, h) => s + W[h][hovered][j], 0) / heads.length;
    w.dataset.weight = String(v); w.textContent = j <= hovered ? v.toFixed(3) : "";
    r.style.background = heads.length === 1 ? rgba(heads[0], Math.min(1, v)) : `rgba(60, 90, 160, ${Math.min(1, v)})`;
    if (best === null || v > best.v) best = {j, v};
  }
  const readout = document.getElementById("readout");
  if (hovered === null) readout.textContent = "hover a token on the left";
  else if (!heads.length) readout.textContent = "choose a head";
  else readout.textContent = `layer ${layer}, ${heads.length === 1 ? "head " + heads[0] : "mean of " + heads.length + " heads"}: ` +
      `"${data.tokens[hovered]}" attends most to "${data.tokens[best.j]}" (${best.v.toFixed(3)})`;
}
draw();
</script>
</body></html>
"""


# ----------------------------------------------------------------------------------------------------------
# `tinylm attention`


def render_attention(
    model: str, text: str, out: str | Path, *, layer: int | None = None, head: int | None = None
) -> Path:
    """Load `model` (a checkpoint dir or a model name), compute the attention over `text` (no prompt
    template) and write `out`: a .png heatmap grid of one layer (default: the last) or an .html view."""
    from tinylm.api import load

    out = _out_file(Path(out))
    if not text:
        raise TinylmError("the text is empty: give the text whose attention to draw")
    lm = load(model)
    if not isinstance(lm.model, GPT):
        raise TinylmError(f"{model}: attention maps need a GPT; this model is a {type(lm.model).__name__}")
    config = lm.model.config
    layer = _index("--layer", config.n_layer - 1 if layer is None else layer, config.n_layer, "layers")
    head = _index("--head", head, config.n_head, "heads")
    ids = lm.tokenizer.encode(text)
    limit = min(config.block_size, MAX_TOKENS)
    if len(ids) > limit:
        raise TinylmError(f"the text is {len(ids)} tokens; attention maps take at most {limit}: shorten it")
    weights = attention_weights(lm.model, ids)
    tokens = lm.tokenizer.token_strings(ids)
    with written_aside(out) as tmp:  # a reader never sees half a file
        if out.suffix.lower() == ".png":
            heatmaps_png(weights, tokens, tmp, layer=layer, head=head)
        else:
            heads = None if head is None else [head]
            page = head_view_html(weights, tokens, layer=layer, heads=heads, title=f"attention of {model}")
            tmp.write_text(page, encoding="utf-8")
    return out


def _out_file(out: Path) -> Path:
    """`out` if a .png or .html file may be written there (not a folder, not below a file)."""
    if out.suffix.lower() not in (".png", ".html"):
        raise TinylmError(
            f"--out {out}: expected a .png or .html file, found the suffix {out.suffix or '(none)'!r}"
        )
    check_output_dir(out.parent, "attention map")
    if out.exists() and not out.is_file():
        raise TinylmError(f"--out {out}: expected a file, found {kind_of(out.stat().st_mode)}")
    return out


def _index(flag: str, value: int | None, count: int, what: str) -> int | None:
    """A layer/head index in -count..count-1 (negative counts from the end), else TinylmError."""
    if value is None:
        return None
    if not -count <= value < count:
        raise TinylmError(
            f"{flag} {value}: the model has {count} {what}; expected 0..{count - 1} "
            f"(or -{count}..-1, counting from the last)"
        )
    return value % count
