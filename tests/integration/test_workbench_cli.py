"""The workbench verbs end to end: train a tiny run once (a subprocess, as a user would), then estimate-memory,
plot, attention and tokenize through the CLI's `main` in this process (no interpreter start per call)."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli, tiny_config, write_config
from tinylm.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-layer char-level run with validation; returns its directory (config.yaml written beside it)."""
    root = tmp_path_factory.mktemp("workbench")
    rows = [{"input": f"what is item {w}", "output": f"item {w} is {c} <end>"} for w, c in
            [("one", "red"), ("two", "blue"), ("three", "green"), ("four", "black"), ("five", "white")]]  # fmt: skip
    (root / "qa.json").write_text(json.dumps({"training_data": rows}))
    cfg = tiny_config(root, root / "qa.json", data={"val_fraction": 0.4}, train={"val_check_interval": 2})
    result = run_cli("train", str(write_config(root, cfg)))
    assert result.returncode == 0, result.stderr
    assert "memory estimate:" in result.stderr and "available RAM" in result.stderr  # printed before training
    return root / "run"


def test_estimate_memory_of_a_config_and_its_checkpoint(run, capsys):
    assert (
        main(["estimate-memory", str(run.parent / "config.yaml"), "--json", "--device-memory", "1GiB"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert (report["batch_size"], report["seq_len"], report["config_precision"]) == (4, 32, "32-true")
    assert set(report["training"]) == {"32-true", "bf16-mixed", "bf16-true"}
    fp32 = report["training"]["32-true"]
    assert (
        fp32["gradients"] == 4 * report["params"] and fp32["optimizer states (AdamW)"] == 8 * report["params"]
    )
    assert fp32["largest_batch"] > 1000 and report["device_memory"] == 2**30
    assert fp32["cuBLAS workspaces"] == 0  # the config trains on the CPU

    assert main(["estimate-memory", str(run.parent / "config.yaml"), "--device", "cuda", "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert gpu["device"] == "cuda" and gpu["training"]["32-true"]["cuBLAS workspaces"] >= 2 * 8 * 2**20

    last = str(run / "checkpoints" / "last")
    assert main(["estimate-memory", last, "--precision", "fp32", "--json"]) == 0
    checkpoint = json.loads(capsys.readouterr().out)
    assert checkpoint["params"] == report["params"] and list(checkpoint["training"]) == ["32-true"]
    assert (checkpoint["batch_size"], checkpoint["seq_len"]) == (1, 32)  # a model: batch 1, its block_size
    assert main(["estimate-memory", last, "--batch-size", "2", "--seq-len", "16"]) == 0
    table = capsys.readouterr().out
    for text in (
        "training, one process",
        "AdamW",
        "activations",
        "KV cache",
        "peak",
        "int8",
        "largest batch",
    ):
        assert text in table, text


def test_estimate_memory_errors(run, capsys):
    assert main(["estimate-memory", str(run.parent / "config.yaml"), "--device-memory", "lots"]) == 2
    assert "--device-memory 'lots': expected a size such as 80GiB" in capsys.readouterr().err
    assert main(["estimate-memory", str(run / "checkpoints" / "last"), "--seq-len", "999"]) == 2
    assert "--seq-len: expected 1..32 (the model's block_size), found 999" in capsys.readouterr().err
    assert main(["estimate-memory", "no/such/config.yaml"]) == 2
    assert "no/such/config.yaml" in capsys.readouterr().err


def test_train_refuses_a_run_that_cannot_fit(run, capsys):
    huge = ["train.batch_size=1000000", f"out_dir={run.parent / 'huge'}"]
    assert main(["train", str(run.parent / "config.yaml"), "--set", *huge]) == 2
    err = capsys.readouterr().err
    assert "this run does not fit in memory" in err and "available RAM" in err
    assert "largest train.batch_size that fits is" in err
    assert not (run.parent / "huge" / "checkpoints").exists()


def test_plot_a_run_and_its_errors(run, tmp_path, capsys):
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
    image = Image.open(tmp_path / "curves.png")
    assert image.format == "PNG" and image.width >= 600 and image.height >= 600
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "has no metrics.csv" in capsys.readouterr().err
    (tmp_path / "empty" / "metrics.csv").write_text("step,name,value\n")
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "no metrics yet" in capsys.readouterr().err


def test_attention_png_and_html(run, tmp_path, capsys):
    last = str(run / "checkpoints" / "last")
    assert (
        main(["attention", last, "what is item two", "--layer", "0", "--out", str(tmp_path / "a.png")]) == 0
    )
    assert Image.open(tmp_path / "a.png").width > 500
    assert (
        main(["attention", last, "what is item two", "--head", "1", "--out", str(tmp_path / "a.html")]) == 0
    )
    page = (tmp_path / "a.html").read_text()
    assert page.startswith("<!doctype html>") and '"heads":[1]' in page and '"layer":1' in page
    assert main(["attention", last, "what", "--layer", "5", "--out", str(tmp_path / "b.png")]) == 2
    assert "--layer 5: the model has 2 layers; expected 0..1" in capsys.readouterr().err
    assert main(["attention", last, "what", "--out", str(tmp_path / "b.svg")]) == 2
    assert "expected a .png or .html file" in capsys.readouterr().err


def test_tokenize_table_and_json(run, capsys):
    last = str(run / "checkpoints" / "last")
    assert main(["tokenize", last, "item one"]) == 0
    assert "8 tokens, 8 characters, 1.00 characters per token" in capsys.readouterr().out
    assert main(["tokenize", last, "item one", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 8 and [t["text"] for t in out["tokens"]][:4] == ["i", "t", "e", "m"]
