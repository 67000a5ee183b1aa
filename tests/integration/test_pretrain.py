"""Pretraining on the shared Shakespeare corpus, the GRU baseline, and packed Q/A rows."""

import re

import pytest

from tests.conftest import SHAKESPEARE, run_cli, tiny_config, write_config
from tinylm import load
from tinylm.train.loggers import read_metrics

needs_corpus = pytest.mark.skipif(
    not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare.txt missing"
)


def _val_losses(run_dir):
    return [v for _, name, v in read_metrics(run_dir / "metrics.csv") if name == "val_loss"]


@pytest.mark.slow
@needs_corpus
def test_cpu_recipe_reaches_val_1_89(tmp_path):
    """examples/shakespeare/cpu.yaml as shipped: the issue's bar (nanoGPT: val 1.886 in 141 s here),
    and the best checkpoint samples words. The run stops where it reaches the bar (train.stop_at_val_loss;
    about step 1125 of 2000: the schedule is the full run's)."""
    out = tmp_path / "shk"
    result = run_cli(
        "train", "examples/shakespeare/cpu.yaml", "--set", f"out_dir={out}", "--set", "train.stop_at_val_loss=1.89",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "reached stop_at_val_loss 1.89" in result.stdout + result.stderr
    losses = _val_losses(out)
    assert losses[0] < 4.17  # ln(67): where an untrained model starts
    assert min(losses) <= 1.89 and losses[-1] <= 1.89 and all(v > 1.89 for v in losses[:-1])  # stopped there
    steps = [s for s, n, _ in read_metrics(out / "metrics.csv") if n == "val_loss"]
    assert steps[-1] < 2000 and (out / "checkpoints" / "last").is_dir()
    lm = load(out / "checkpoints" / "best")
    assert lm.tokenizer.vocab_size == 67
    sample = lm.generate("ROMEO:", raw=True, max_new_tokens=200, temperature=0.8, top_k=50, seed=0)
    assert len(sample) == 200
    assert len(re.findall(r"\b(the|and|to|I|you|my|of)\b", sample)) >= 5  # words, not noise


def test_gru_baseline_trains_and_generates(tmp_path, qa_file):
    cfg = tiny_config(
        tmp_path, qa_file, model={"kind": "gru", "n_layer": 2, "n_embd": 32}, train={"max_steps": 40}
    )
    assert run_cli("train", str(write_config(tmp_path, cfg))).returncode == 0
    losses = [v for _, n, v in read_metrics(tmp_path / "run" / "metrics.csv") if n == "train_loss"]
    assert losses[-1] < losses[0]
    lm = load(tmp_path / "run" / "checkpoints" / "last")
    assert isinstance(lm.generate("what is item one", max_new_tokens=5), str)


def test_packed_qa_rows_train(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file, data={"packing": True, "max_length": 128}, train={"max_steps": 30})
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert "rows 2" in result.stderr  # five examples of ~37 tokens packed into rows of 128
    losses = [v for _, n, v in read_metrics(tmp_path / "run" / "metrics.csv") if n == "train_loss"]
    assert losses[-1] < losses[0]
