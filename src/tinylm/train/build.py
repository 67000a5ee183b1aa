"""What `fit` builds before training, in one place so that the memory check (`tinylm.train.fits`) and the
`estimate-memory` report see the very model `fit` trains: the model config of a run (from scratch, from
`init_from`, or resumed), the transformers model of an "hf" checkpoint, and freezing / LoRA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from tinylm.checkpoint import is_hf_checkpoint, read_meta
from tinylm.config import RunConfig, TrainConfig
from tinylm.errors import ConfigError, TinylmError
from tinylm.hf_model import HFCausalLM
from tinylm.hub import resolve_model
from tinylm.model import GPTConfig
from tinylm.tokenizers import load_tokenizer
from tinylm.train.data import prepare
from tinylm.train.freeze import apply_freezing
from tinylm.train.lora import apply_lora


def init_path(cfg: RunConfig) -> Path | None:
    """The checkpoint directory of `init_from` (a model name or HF folder converted once), or None."""
    return resolve_model(cfg.init_from) if cfg.init_from is not None else None


def model_config(cfg: RunConfig, init: Path | None, vocab_size: int) -> GPTConfig:
    """The GPTConfig of the run: `init`'s with the config's `model` overrides (dropout), or the config's
    `model` with vocab_size from the tokenizer and block_size from data.max_length."""
    if init is None:
        return cfg.model_config_for(vocab_size)
    if is_hf_checkpoint(init):
        raise TinylmError(f"{init}: runs through transformers (tinylm.hf_model); it has no GPT config")
    return replace(GPTConfig.from_dict(read_meta(init)["model"]), **cfg.model)


def planned_model_config(cfg: RunConfig) -> GPTConfig:
    """The GPTConfig `fit` would build for `cfg`, before it runs (the tokenizer trained on the data if
    the config says so), resolved by `model_config` as `fit` resolves it."""
    init = init_path(cfg)
    if init is not None:
        return model_config(cfg, init, 0)
    if cfg.tokenizer.path is not None:
        return model_config(cfg, None, load_tokenizer(cfg.tokenizer.path).vocab_size)
    return model_config(cfg, None, prepare(cfg).tokenizer.vocab_size)


def adapt(model: nn.Module, t: TrainConfig) -> None:
    """Freeze parameter groups, or wrap layers with LoRA adapters, as the config asks."""
    if t.freeze is not None:
        f = t.freeze
        apply_freezing(model, emb=f.emb, ln=f.ln, attn=f.attn, ff=f.ff, other=f.other, keep=f.keep)
    elif t.lora is not None:
        apply_lora(model, r=t.lora.r, alpha=t.lora.alpha, dropout=t.lora.dropout, targets=t.lora.targets)


def hf_model(cfg: RunConfig, source: Path) -> HFCausalLM:
    """The transformers model of an "hf" checkpoint, after refusing the options it cannot honour."""
    problems = []
    if cfg.data.packing:
        problems.append("data.packing: a transformers model cannot keep packed rows apart; set it to false")
    if cfg.model:
        problems.append(
            f"model: {', '.join(sorted(cfg.model))} cannot be set on a transformers model; "
            f"it keeps the settings of {source / 'config.json'}"
        )
    if problems:
        raise ConfigError(problems, f"the run on {source}")
    return HFCausalLM.from_pretrained(source)
