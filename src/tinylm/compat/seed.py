"""The seed's trainer_config.yaml, accepted as written: its keys, checked, then translated into a tinylm run
config (a raw dict that `tinylm.config` validates like any other).

What this module does not do: it validates no types (`tinylm.config` does, once, for both dialects) and
imports nothing above the data formats, so the config loader can use it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tinylm.data.formats import available_splits
from tinylm.errors import TinylmError

SEED_TRAINER_SCHEMA: dict[str, Any] = {
    "data": {
        "batch_size": 0,
        "data_dir": 0,
        "max_length": 0,
        "on_tpu": 0,
        "truncate_promt": 0,
        "prompt_template": 0,  # tinylm's addition: `chat` trains on the model's chat template
    },
    "model_name": 0,
    "model_params": dict.fromkeys(
        [
            "adam_betas",
            "do_compute_metrics",
            "learning_rate",
            "use_cache",
            "warmup_steps_per_cent",
            "weight_decay",
            "do_freeze",
            "freeze_emb",
            "freeze_ln",
            "freeze_attn",
            "freeze_ff",
            "freeze_other",
            "layers_not_to_freeze",
        ],
        0,
    ),
    "seed": 0,
    "trainer": {
        "checkpoint": {"dirpath": 0, "every_n_train_steps": 0, "log_obg": 0, "mode": 0},
        "ckpt_path": 0,
        "params": dict.fromkeys(
            [
                "accelerator",
                "accumulate_grad_batches",
                "gradient_clip_val",
                "log_every_n_steps",
                "max_epochs",
                "num_sanity_val_steps",
                "overfit_batches",
                "precision",
                "val_check_interval",
            ],
            0,
        ),
    },
    "wandb": {"api": 0, "args": {"group": 0, "job_type": 0, "name": 0, "project_name": 0}},
}
SEED_PROMPT = "Question: {prompt}\nAnswer:"
_SEED_PRECISION = {"16": "16-mixed", "32": "32-true", "bf16": "bf16-mixed", "64": "32-true"}


def is_seed_trainer(raw: dict[str, Any]) -> bool:
    return "model_name" in raw and "trainer" in raw


def seed_unknown_keys(raw: Any, schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of a seed config that its schema does not have, with the closest valid key."""
    problems = []
    for key, value in (raw or {}).items() if isinstance(raw, dict) else []:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            problems.append(f"{prefix}{key}: unknown key{hint}")
        elif isinstance(schema[key], dict):
            problems += seed_unknown_keys(value, schema[key], f"{prefix}{key}.")
    return problems


def translate_seed_trainer(raw: dict[str, Any]) -> dict[str, Any]:
    """The seed's trainer_config.yaml as a tinylm run config (a raw dict, validated like any other)."""
    data, mp = raw.get("data") or {}, raw.get("model_params") or {}
    trainer = raw.get("trainer") or {}
    ck, params = trainer.get("checkpoint") or {}, trainer.get("params") or {}
    warmup = mp.get("warmup_steps_per_cent", 0.0) or 0.0
    train: dict[str, Any] = {
        "batch_size": data.get("batch_size", 8),
        "max_epochs": params.get("max_epochs", 1),
        "learning_rate": mp.get("learning_rate", 5e-5),
        "weight_decay": mp.get("weight_decay", 0.0),
        "warmup": warmup / 100
        if warmup >= 1
        else warmup,  # a per-cent value or a fraction: both read as a fraction
        "compute_metrics": bool(mp.get("do_compute_metrics", False)),
    }
    if "adam_betas" in mp:
        train["betas"] = list(mp["adam_betas"])
    for seed_key, key in [
        ("accelerator", "accelerator"),
        ("accumulate_grad_batches", "accumulate_grad_batches"),
        ("gradient_clip_val", "grad_clip"),
        ("log_every_n_steps", "log_every_n_steps"),
        ("num_sanity_val_steps", "num_sanity_val_steps"),
        ("overfit_batches", "overfit_batches"),
        ("val_check_interval", "val_check_interval"),
    ]:
        if params.get(seed_key) is not None:
            train[key] = params[seed_key]
    if train.get("accelerator") == "gpu":
        train["accelerator"] = "cuda"
    if "precision" in params:
        train["precision"] = _SEED_PRECISION.get(str(params["precision"]), str(params["precision"]))
    if mp.get("do_freeze"):
        train["freeze"] = {
            name: bool(mp.get(f"freeze_{name}", False)) for name in ("emb", "ln", "attn", "ff", "other")
        } | {"keep": list(mp.get("layers_not_to_freeze") or [])}
    path = seed_data_file(data.get("data_dir", ""))
    has_val = path is not None and "val" in _splits(path)
    out: dict[str, Any] = {
        "out_dir": ck.get("dirpath", "runs/sft"),
        "seed": raw.get("seed", 1337),
        "init_from": raw.get("model_name"),
        "data": {
            "path": str(path or data.get("data_dir", "")),
            "kind": "qa",
            "split": "train",
            "max_length": data.get("max_length", 256),
            "prompt_template": data.get("prompt_template", SEED_PROMPT),
            "loss_on": "response",
            **({"val_split": "val"} if has_val else {"val_fraction": 0.1}),
        },
        "train": train,
        "checkpoint": {
            "every_n_train_steps": ck.get("every_n_train_steps"),
            "monitor": ck.get("log_obg", "val_loss"),
            "mode": ck.get("mode", "min"),
            "resume": trainer.get("ckpt_path"),
        },
    }
    wandb = raw.get("wandb")
    if wandb:
        args = wandb.get("args") or {}
        out["logger"] = {
            "wandb": {
                "project": args.get("project_name", "tinylm"),
                "name": args.get("name"),
                "group": args.get("group"),
                "job_type": args.get("job_type"),
                "mode": "offline",
            }
        }
    return out


def seed_data_file(data_dir: str | Path) -> Path | None:
    """The seed's data_dir names a JSON file, or a folder holding exactly one."""
    p = Path(data_dir)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
        return files[0] if len(files) == 1 else None
    return p if p.exists() else None


def _splits(path: Path) -> list[str]:
    try:
        return available_splits(path)
    except TinylmError:  # a bad file is reported when the data is read, with its own message
        return []
