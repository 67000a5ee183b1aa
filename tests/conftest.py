"""Shared fixtures: tiny configs and data written to tmp_path, the shared corpus, the CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it when missing
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    """A small SFA-format Q/A file."""
    rows = [
        {"input": f"what is item {w}", "output": f"item {w} is {c} <end>"}
        for w, c in [
            ("one", "red"),
            ("two", "blue"),
            ("three", "green"),
            ("four", "black"),
            ("five", "white"),
        ]
    ]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"training_data": rows}))
    return path


def tiny_config(tmp_path: Path, data_path: Path, **sections) -> dict:
    """A 2-layer, 32-dim config that trains in a second or two on the CPU."""
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "seed": 7,
        "data": {
            "path": str(data_path),
            "kind": "qa",
            "max_length": 32,
            "prompt_template": "Q: {prompt}\nA:",
        },
        "tokenizer": {"kind": "char"},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "pos": "rope"},
        "train": {
            "batch_size": 4,
            "max_steps": 6,
            "learning_rate": 3e-3,
            "log_every_n_steps": 2,
            "num_sanity_val_steps": 0,
            "accelerator": "cpu",
        },
        "checkpoint": {"monitor": "train_loss"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m tinylm.cli ARGS` in a subprocess, as a user would; `input` is piped to its stdin."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tinylm.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=timeout,
    )
