"""Freezing parameter groups for fine-tuning (the seed's freeze_emb/ln/attn/ff/other and layers_not_to_freeze).

A parameter belongs to one of five groups, read from its name in the GPT of `tinylm.model`: embeddings
(`wte`, `wpe`), norms (`ln_1`, `ln_2`, `ln_f`), attention (`attn.*`), feed-forward (`mlp.*`) and everything
else (an untied `lm_head`, the GRU baseline's `gru.*`). A tied `lm_head.weight` is `wte.weight` itself, so it
follows the embedding group. The same reading covers the module names of models run through transformers
(`tinylm.hf_model`, names under `hf.`): GPT-2 / GPT-Neo / GPT-J use tinylm's names, and the Llama family's
`embed_tokens`, `self_attn` and `*norm*` (OPT's `fc1`/`fc2`, GPT-NeoX's `embed_in`, Bloom's
`word_embeddings`/`self_attention`) map onto the same groups.

What this module does not do: it never unfreezes a parameter (it only sets `requires_grad=False`), builds no
optimizer (`tinylm.train.optim` skips frozen parameters) and knows nothing about LoRA (`tinylm.train.lora`).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from tinylm.errors import TinylmError
from tinylm.model import count_params

GROUPS = ("emb", "ln", "attn", "ff", "other")
_EMB = {"wte", "wpe", "embed_tokens", "embed_positions", "embed_in", "word_embeddings"}
_ATTN = {"attn", "self_attn", "attention", "self_attention"}
_FF = {"mlp", "feed_forward", "fc1", "fc2"}


def group_of(name: str) -> str:
    """The group of a parameter name: "h.0.attn.qkv.weight" -> "attn", "wte.weight" -> "emb",
    "hf.model.layers.0.post_attention_layernorm.weight" -> "ln", ... (the first part that names one)."""
    for part in name.split("."):
        if part in _EMB:
            return "emb"
        if part.startswith("ln_") or "norm" in part:
            return "ln"
        if part in _ATTN:
            return "attn"
        if part in _FF:
            return "ff"
    return "other"


def matches(name: str, pattern: str) -> bool:
    """True if `pattern` is a glob matching the whole name ("h.5.*") or a substring of it ("h.11.")."""
    return fnmatchcase(name, pattern) or pattern in name


def apply_freezing(
    model: nn.Module,
    *,
    emb: bool,
    ln: bool,
    attn: bool,
    ff: bool,
    other: bool,
    keep: Sequence[str] = (),
) -> dict[str, int]:
    """Set requires_grad=False on every parameter of the groups flagged True, except those matching `keep`.

    `keep` holds name patterns (see `matches`); a substring matches anywhere, so write "h.1." rather than
    "h.1", which also matches "h.10.*". Every pattern must match some parameter, or TinylmError names each
    one that does not, before anything is frozen. Returns {"trainable": n, "total": n}, tied weights
    counted once.
    """
    frozen = {group for group, flag in zip(GROUPS, (emb, ln, attn, ff, other), strict=True) if flag}
    named = dict(model.named_parameters())
    _check_patterns(keep, list(named))
    for name, p in named.items():
        if group_of(name) in frozen and not any(matches(name, k) for k in keep):
            p.requires_grad_(False)
    return {"trainable": count_params(model, trainable_only=True), "total": count_params(model)}


def describe(model: nn.Module) -> str:
    """A one-line summary for the CLI: "trainable 1,234 / total 5,678 (21.7%)"."""
    trainable, total = count_params(model, trainable_only=True), count_params(model)
    return f"trainable {trainable:,} / total {total:,} ({100 * trainable / max(total, 1):.1f}%)"


def _check_patterns(patterns: Sequence[str], names: list[str]) -> None:
    unmatched = [k for k in patterns if not any(matches(n, k) for n in names)]
    if unmatched:
        listed = ", ".join(repr(k) for k in unmatched)
        raise TinylmError(
            f"train.freeze.keep (layers_not_to_freeze): pattern(s) {listed} match no parameter; names look like "
            f"{', '.join(names[:6])}, ... ({len(names)} in all); use a glob like 'h.1.*' or a substring "
            "like 'h.1.'"
        )
