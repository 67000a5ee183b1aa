import pytest
import torch

from tinylm.checkpoint import CheckpointManager, load_checkpoint, load_trainer_state, save_checkpoint
from tinylm.errors import CheckpointError
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer


def _parts():
    tok = train_tokenizer("char", ["hello world"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, pos="rope")
    torch.manual_seed(0)
    return build_model(cfg), cfg, tok


def test_checkpoint_loads_from_its_path_alone(tmp_path):
    model, cfg, tok = _parts()
    path = save_checkpoint(
        tmp_path / "ck", model=model, config=cfg, tokenizer=tok, meta={"step": 3}, trainer_state={"step": 3}
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "tinylm.json",
        "tokenizer",
        "trainer_state.pt",
    ]
    loaded = load_checkpoint(path)
    x = torch.tensor([tok.encode("hello")])
    model.eval()
    torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.config == cfg and loaded.meta["step"] == 3 and loaded.meta["format_version"] == 1
    assert loaded.tokenizer.encode("world") == tok.encode("world")
    assert load_trainer_state(path) == {"step": 3}


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, cfg, tok = _parts()
    target = tmp_path / "ck"
    save_checkpoint(target, model=model, config=cfg, tokenizer=tok, meta={"step": 1})

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(tok, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model=model, config=cfg, tokenizer=tok, meta={"step": 2})
    assert load_checkpoint(target).meta["step"] == 1


def test_manager_keeps_top_k_and_last(tmp_path):
    model, cfg, tok = _parts()
    mgr = CheckpointManager(tmp_path, monitor="val_loss", mode="min", save_top_k=2)
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
        save_checkpoint(mgr.step_dir(step), model=model, config=cfg, tokenizer=tok, meta={"step": step})
        mgr.record(step, loss if mgr.improves(loss) else None, last=True)
    kept = sorted(p.name for p in tmp_path.glob("step-*"))
    assert kept == ["step-000002", "step-000003", "step-000004"]  # best two + last
    assert (tmp_path / "best").resolve().name == "step-000002"
    assert (tmp_path / "last").resolve().name == "step-000004"
    assert load_checkpoint(tmp_path / "best").meta["step"] == 2


def test_bad_checkpoint_paths_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a tinylm checkpoint"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "v9").mkdir()
    (tmp_path / "v9" / "tinylm.json").write_text('{"format_version": 9}')
    with pytest.raises(CheckpointError, match="format_version 9"):
        load_checkpoint(tmp_path / "v9")
