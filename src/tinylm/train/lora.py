"""Low-rank adapters (LoRA, Hu et al. 2021), written out here rather than taken from peft.

`apply_lora` wraps chosen `nn.Linear` layers of a model in `LoRALinear` and freezes everything else, so only
the adapters A (r, in) and B (out, r) train; `merge_lora` folds them back, W <- W + (alpha / r) B A, leaving a
plain model whose state_dict has exactly the original keys, for checkpoints and exports.

What this module does not do: no quantized bases (QLoRA), no adapters on embeddings, no loading of adapters
from disk; `lora_state_dict` returns the tensors and the caller stores them with r and alpha.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinylm.errors import TinylmError
from tinylm.model import count_params


class LoRALinear(nn.Module):
    """base(x) + dropout(x) A^T B^T * (alpha / r) around a frozen nn.Linear; B = 0, so it starts as base."""

    def __init__(self, base: nn.Linear, *, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in the paper's code
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        delta = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return self.base(x) + delta * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base Linear with the adapter added into its weight (in place), computed in float32."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
        self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def apply_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] = ("attn.qkv", "attn.proj"),
) -> int:
    """Wrap every nn.Linear whose qualified name ends with a target in a LoRALinear; freeze all else.

    A target matches at a name boundary: "attn.proj" matches "h.0.attn.proj", not "h.0.mlp.proj" or
    "h.0.xattn.proj". Raises TinylmError, before changing anything, if r < 1, if the model already has
    adapters, if a target matches no Linear (listing the Linear names), or if a matched Linear shares its
    weight (a tied lm_head: merging would change the embedding too). Returns the trainable parameter count.
    """
    chosen = _targeted_linears(model, r, targets)
    model.requires_grad_(False)
    for name in chosen:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoRALinear(getattr(owner, child), r=r, alpha=alpha, dropout=dropout))
    return count_params(model, trainable_only=True)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its base Linear with the adapter merged in; returns `model`, changed in place.

    The merged weights keep requires_grad=False (as apply_lora left them); call `model.requires_grad_()`
    to train the merged model further.
    """
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in wrapped:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, getattr(owner, child).merged())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, under their state_dict names ("h.0.attn.qkv.lora_A", ...), detached."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[f"{name}.lora_A"] = m.lora_A.detach()
            out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def _targeted_linears(model: nn.Module, r: int, targets: Sequence[str]) -> list[str]:
    """Names of the Linear layers to wrap, after checking every argument (TinylmError on any problem)."""
    if r < 1:
        raise TinylmError(f"train.lora.r={r} must be >= 1")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise TinylmError("the model already has LoRA adapters; merge_lora it before applying new ones")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [n for n in linears if any(_ends(n, t) for t in targets)]
    problems = [f"{t!r} matches no Linear" for t in targets if not any(_ends(n, t) for n in linears)]
    problems += [f"{n} shares its weight with {other} (tied)" for n, other in _tied(model, chosen)]
    if problems or not chosen:
        kinds = dict.fromkeys(re.sub(r"(^|\.)(h|layers)\.\d+\.", r"\1\2.N.", n) for n in linears)
        raise TinylmError(
            f"train.lora.targets={list(targets)}: {'; '.join(problems) or 'no target given'}. "
            f"Linear layers: {', '.join(kinds)}"
        )
    return chosen


def _ends(name: str, target: str) -> bool:
    """True if the module name ends with `target` at a dot: "h.0.attn.proj" ends with "attn.proj"."""
    return name == target or name.endswith("." + target)


def _tied(model: nn.Module, chosen: list[str]) -> list[tuple[str, str]]:
    """(layer, other parameter) for each chosen Linear whose weight is also registered elsewhere."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    out = []
    for n in chosen:
        names = owners[id(model.get_submodule(n).weight)]
        out += [(n, other) for other in names if other != f"{n}.weight"][:1]
    return out
