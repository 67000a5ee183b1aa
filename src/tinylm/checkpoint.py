"""Self-describing checkpoint directories: atomic save, load from the path alone, best/last bookkeeping.

A checkpoint directory holds:

    tinylm.json          format version, model config, generation defaults, prompt template, step, metrics
    model.safetensors    the weights (tied weights stored once)
    tokenizer/           the tokenizer, loadable with `tinylm.tokenizers.load_tokenizer`
    config.yaml          the resolved training config (when written by `tinylm train`)
    trainer_state.pt     optimizer, step, epoch, data position, RNG states (only in training checkpoints)

A model that writes itself as a Hugging Face directory (`CausalLM.save_pretrained`: one that runs through
transformers, `tinylm.hf_model`) is stored so (its config.json beside model.safetensors), and tinylm.json's
model is {"kind": "hf", "model_type": ...}.

Every directory is written under a temporary name and renamed into place, and the `last` / `best` links
are replaced atomically, so a process killed while saving never leaves a corrupt `last` or `best`.
This module knows nothing about the training loop; it stores and restores what it is given.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from tinylm.errors import CheckpointError
from tinylm.files import check_input_file, dir_written_aside
from tinylm.hf_model import KIND as HF_KIND
from tinylm.hf_model import HFCausalLM, HFModelConfig
from tinylm.model import GPTConfig, build_model, weights_follow
from tinylm.tokenizers import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
META_FILE = "tinylm.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
TOKENIZER_DIR = "tokenizer"
RUN_CONFIG_FILE = "config.yaml"  # the resolved training config (also in the run folder)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its config, tokenizer and metadata."""

    path: Path
    model: nn.Module
    config: GPTConfig | HFModelConfig
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    config: GPTConfig | HFModelConfig,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    run_config: str | None = None,
) -> Path:
    """Write a complete checkpoint to `directory` atomically (a temporary sibling, then a rename)."""
    directory = Path(directory)
    save_pretrained = getattr(model, "save_pretrained", None)  # a CausalLM's; the GRU baseline has none
    with dir_written_aside(directory) as tmp:
        if save_pretrained is not None:
            save_pretrained(tmp)  # config.json + model.safetensors, loadable by transformers as well
        else:
            save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save(tmp / TOKENIZER_DIR)
        info = {"format_version": FORMAT_VERSION, "model": config.to_dict(), **(meta or {})}
        (tmp / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if run_config is not None:
            (tmp / RUN_CONFIG_FILE).write_text(run_config)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
    return directory


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (or a `last` / `best` link to one) with nothing but its path."""
    path = Path(path)
    meta = read_meta(path)
    if _is_hf(meta):
        model = HFCausalLM.from_pretrained(path).to(device)
        return Checkpoint(path, model, model.config, load_tokenizer(path / TOKENIZER_DIR), meta)
    try:
        config = GPTConfig.from_dict(meta["model"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path / META_FILE}: invalid model config: {e}") from None
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{path}: missing {WEIGHTS_FILE}; the checkpoint is incomplete")
    with weights_follow():  # no random init: every weight is loaded next
        model = build_model(config)
    load_weights(model, weights)
    model.to(device).eval()
    return Checkpoint(path, model, config, load_tokenizer(path / TOKENIZER_DIR), meta)


def load_weights(model: nn.Module, weights: Path, *, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into `model`, refusing a file that is not one (empty, truncated, garbage)
    or whose tensors do not match the model (names or shapes), with the file named."""
    check_input_file(weights, "weights file", CheckpointError)
    size = weights.stat().st_size
    try:
        with safe_open(weights, framework="pt") as f:  # reads the header only: names, shapes, offsets
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file ({size} bytes: {e}); the checkpoint is damaged or "
            "incomplete"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    wrong = [
        f"{n} {shapes[n]}, expected {expected[n]}"
        for n in expected
        if n in shapes and shapes[n] != expected[n]
    ]
    if wrong:
        raise CheckpointError(f"{weights}: the weights do not match the model config (shapes {wrong[:5]})")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:  # a file cut short after its header
        raise CheckpointError(f"{weights}: the weights cannot be read ({e}); the file is damaged") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: the weights do not match the model config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )


def read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory, found a file")
    meta_file = path / META_FILE
    if not meta_file.exists():
        raise CheckpointError(f"{path}: not a tinylm checkpoint (no {META_FILE})")
    check_input_file(meta_file, "checkpoint description", CheckpointError)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{meta_file}: unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: expected a JSON object, found {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_file}: format_version {version!r}; this tinylm reads version {FORMAT_VERSION}"
        )
    return meta


def is_hf_checkpoint(path: Path) -> bool:
    """True for a checkpoint whose model runs through transformers (`tinylm.hf_model`)."""
    return _is_hf(read_meta(path))


def _is_hf(meta: dict[str, Any]) -> bool:
    model = meta.get("model")
    return isinstance(model, dict) and model.get("kind") == HF_KIND


def load_trainer_state(path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The saved optimizer, loop position and RNG states of a training checkpoint (tensors and plain
    values only: `weights_only`, so a crafted file runs no code); a damaged file, or one without every
    key in `keys`, is a CheckpointError."""
    state_file = Path(path) / STATE_FILE
    if not state_file.exists():
        raise CheckpointError(f"{path}: no {STATE_FILE}; it cannot be resumed (only loaded for inference)")
    check_input_file(state_file, "trainer state", CheckpointError)
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        raise CheckpointError(
            f"{state_file}: not a readable trainer state ({type(e).__name__}: {str(e).partition(chr(10))[0][:200]}); "
            "the checkpoint cannot be resumed, though its weights may still load for inference"
        ) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{state_file}: not a tinylm trainer state (missing {', '.join(missing)})")
    return state


class CheckpointManager:
    """Step directories `step-000100/` under one folder, with `last` and `best` links and top-k pruning."""

    def __init__(self, root: str | Path, *, monitor: str, mode: str = "min", save_top_k: int = 1):
        self.root = Path(root)
        self.monitor, self.mode, self.save_top_k = monitor, mode, save_top_k
        self.scores: dict[str, float] = {}  # step dir name -> monitored value
        self.written: set[str] = set()  # step dirs this run wrote: the only ones it may prune

    def step_dir(self, step: int) -> Path:
        return self.root / f"step-{step:06d}"

    def improves(self, value: float) -> bool:
        if self.save_top_k == 0:
            return False
        if self.save_top_k < 0 or len(self.scores) < self.save_top_k:
            return True
        worst = max(self.scores.values()) if self.mode == "min" else min(self.scores.values())
        return value < worst if self.mode == "min" else value > worst

    def record(self, step: int, value: float | None, *, last: bool) -> None:
        """After `step_dir(step)` was saved: update links and drop checkpoints no longer needed."""
        name = self.step_dir(step).name
        self.written.add(name)
        if value is not None and self.improves(value):
            self.scores[name] = value
            self._trim_scores()
            best = (
                min(self.scores, key=self.scores.get)
                if self.mode == "min"
                else max(self.scores, key=self.scores.get)
            )
            _link(self.root / "best", best)
        if last:
            _link(self.root / "last", name)
        self._prune()

    def state_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "written": sorted(self.written)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run that saved `state`: its scores, and the step dirs it wrote (checkpoints from
        before the `written` list: the scored ones and the targets of `last` and `best`)."""
        self.scores = {k: float(v) for k, v in state.get("scores", {}).items()}
        links = {_target(self.root / "last"), _target(self.root / "best")} - {None}
        self.written = set(state.get("written", [])) | set(self.scores) | links

    def _trim_scores(self) -> None:
        if self.save_top_k < 0:
            return
        ranked = sorted(self.scores, key=self.scores.get, reverse=self.mode == "max")
        self.scores = {k: self.scores[k] for k in ranked[: self.save_top_k]}

    def _prune(self) -> None:
        """Remove the step dirs this run wrote that are no longer a top-k, `last` or `best`; never another's."""
        keep = set(self.scores) | {_target(self.root / "last"), _target(self.root / "best")}
        for name in sorted(self.written - keep):
            shutil.rmtree(self.root / name, ignore_errors=True)
            self.written.discard(name)


def _link(link: Path, target: str) -> None:
    """Point `link` at `target` atomically (a new link under a temporary name, then a rename)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _target(link: Path) -> str | None:
    return os.readlink(link) if link.is_symlink() else None
