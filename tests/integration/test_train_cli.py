"""End to end through the `tinylm` command: train, generate, embed, tokenizer train, resume, DDP, loggers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_cli, tiny_config, write_config
from tinylm.train.loggers import read_metrics


def test_train_then_generate_and_embed(tmp_path, qa_file):
    cfg = write_config(tmp_path, tiny_config(tmp_path, qa_file))
    result = run_cli("train", str(cfg))
    assert result.returncode == 0, result.stderr
    last = tmp_path / "run" / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == [
        "config.yaml",
        "model.safetensors",
        "tinylm.json",
        "tokenizer",
        "trainer_state.pt",
    ]
    assert (tmp_path / "run" / "checkpoints" / "best").exists()
    assert {name for _, name, _ in read_metrics(tmp_path / "run" / "metrics.csv")} >= {"train_loss", "lr"}
    gen = run_cli("generate", str(last), "what is item one", "--max-new-tokens", "5")
    assert gen.returncode == 0, gen.stderr
    assert len(gen.stdout.strip("\n")) <= 5  # char tokens: at most 5 characters
    emb = run_cli("embed", str(last), "hello", "what is item two", "--json", "--pooling", "last")
    assert emb.returncode == 0, emb.stderr
    out = json.loads(emb.stdout)
    assert out["dim"] == 32 and len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 32


def test_tokenizer_train_prints_its_statistics(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Hello, do you like tea? In the sunlit terraces of the palace.\n" * 20)
    result = run_cli("tokenizer", "train", "--kind", "word", str(corpus), "--out", str(tmp_path / "tok"))
    assert result.returncode == 0, result.stderr
    assert "vocab size" in result.stdout and "characters per token" in result.stdout
    assert "unknown-token rate" in result.stdout and "0.00%" in result.stdout
    assert (tmp_path / "tok" / "tinylm_tokenizer.json").is_file()


def test_resume_after_sigkill_continues_the_same_run(tmp_path, qa_file):
    """N steps straight == N/2 steps, SIGKILL, resume; the loss curves agree within 1e-5."""
    steps = 400
    base = tiny_config(
        tmp_path,
        qa_file,
        train={"max_steps": steps, "log_every_n_steps": 1, "learning_rate": 1e-3},
        model={"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.1},
    )
    straight = dict(base, out_dir=str(tmp_path / "straight"))
    assert run_cli("train", str(write_config(tmp_path, straight, "straight.yaml"))).returncode == 0

    killed = dict(base, out_dir=str(tmp_path / "killed"))
    killed["checkpoint"] = {"monitor": "train_loss", "every_n_train_steps": steps // 2, "resume": "auto"}
    killed_cfg = write_config(tmp_path, killed, "killed.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", "train", str(killed_cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    half = tmp_path / "killed" / "checkpoints" / f"step-{steps // 2:06d}"
    deadline = time.time() + 120
    while not (half / "trainer_state.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert (tmp_path / "killed" / "checkpoints" / "last").exists()

    resumed = run_cli("train", str(killed_cfg))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {steps // 2}" in resumed.stderr

    def curve(run):
        return {s: v for s, name, v in read_metrics(tmp_path / run / "metrics.csv") if name == "train_loss"}

    a, b = curve("straight"), curve("killed")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-5


def test_ddp_on_two_cpu_processes(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file, train={"devices": 2, "strategy": "ddp", "max_steps": 4})
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in result.stderr
    assert (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").is_file()


def test_ddp_with_validation_and_best_checkpoints(tmp_path, qa_file):
    """DDP with validation, top-k best and periodic saves: the run completes and keeps best and last."""
    cfg = tiny_config(
        tmp_path,
        qa_file,
        data={"val_fraction": 0.4},
        train={"devices": 2, "strategy": "ddp", "max_steps": 6, "val_check_interval": 1, "batch_size": 1},
        checkpoint={"monitor": "val_loss", "save_top_k": 1, "every_n_train_steps": 3},
    )
    result = run_cli("train", str(write_config(tmp_path, cfg)), timeout=120)
    assert result.returncode == 0, result.stderr
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "best").exists() and (ckpts / "last").resolve().name == "step-000006"


def test_tensorboard_and_wandb_offline_logs(tmp_path, qa_file, monkeypatch):
    cfg = tiny_config(tmp_path, qa_file)
    cfg["logger"] = {"tensorboard": True, "wandb": {"project": "tinylm-test", "mode": "offline"}}
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_epochs_accumulation_overfit_sanity_and_bf16(tmp_path, qa_file):
    """The seed trainer's knobs together: max_epochs, accumulate_grad_batches, overfit_batches,
    num_sanity_val_steps, val_check_interval as a fraction, bf16-mixed precision on the CPU."""
    cfg = tiny_config(
        tmp_path,
        qa_file,
        data={"val_fraction": 0.4},
        train={
            "max_steps": None,
            "max_epochs": 6,
            "batch_size": 1,
            "accumulate_grad_batches": 2,
            "overfit_batches": 2,
            "num_sanity_val_steps": 1,
            "val_check_interval": 0.5,
            "precision": "bf16-mixed",
        },
        checkpoint={"monitor": "val_loss", "every_n_train_steps": 2},
    )
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    # overfit_batches=2 of batch 1 with accumulation 2: one optimizer step per epoch, six in all
    assert max(s for s, _, _ in rows) == 6
    assert [s for s, n, _ in rows if n == "val_loss"] == [1, 2, 3, 4, 5, 6]
    train = [v for _, n, v in rows if n == "train_loss"]
    assert train[-1] < train[0]
    assert (tmp_path / "run" / "checkpoints" / "best").exists()


def test_stop_at_val_loss_ends_the_run_at_the_first_validation_under_it(tmp_path, qa_file):
    cfg = tiny_config(
        tmp_path,
        qa_file,
        data={"val_fraction": 0.4},
        train={"max_steps": 40, "val_check_interval": 5, "stop_at_val_loss": 1000.0},  # any loss is under
    )
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert "step 5: val_loss reached stop_at_val_loss 1000.0" in result.stdout + result.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [s for s, n, _ in rows if n == "val_loss"] == [5] and max(s for s, _, _ in rows) == 5
    assert (tmp_path / "run" / "checkpoints" / "last").exists()


@pytest.mark.gpu
def test_bf16_training_on_the_gpu(tmp_path, qa_file):
    cfg = tiny_config(
        tmp_path, qa_file, train={"accelerator": "cuda", "precision": "bf16-mixed", "max_steps": 10}
    )
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert "on cuda" in result.stderr
