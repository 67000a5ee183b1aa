"""Bad input from a user: one clear message naming file, record/line and key; exit 2; no traceback."""

import json

import pytest

from tests.conftest import run_cli, tiny_config, write_config
from tinylm.cli import main
from tinylm.errors import TinylmError


def _train(tmp_path, data_path, **sections):
    return run_cli("train", str(write_config(tmp_path, tiny_config(tmp_path, data_path, **sections))))


def _assert_clean_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_missing_data_file(tmp_path):
    _assert_clean_error(_train(tmp_path, tmp_path / "nope.json"), "nope.json", "not found")


def test_malformed_json_names_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"training_data": [\n  {"input": "a", "output": "b"},\n  {"input": "c" "output": "d"}\n]}'
    )
    _assert_clean_error(_train(tmp_path, bad), "bad.json", "line 3", "column")


def test_missing_key_names_the_record(tmp_path):
    bad = tmp_path / "keys.json"
    bad.write_text(
        json.dumps({"training_data": [{"input": "a", "output": "b"}, {"input": "c", "outptu": "d"}]})
    )
    _assert_clean_error(_train(tmp_path, bad), "keys.json", "record 1", "output")


def test_directory_where_a_file_is_expected(tmp_path):
    _assert_clean_error(_train(tmp_path, tmp_path), str(tmp_path), "directory")


def test_config_errors_are_listed_together(tmp_path, qa_file):
    cfg = tiny_config(tmp_path, qa_file)
    cfg["train"]["lerning_rate"] = 0.1
    cfg["model"]["pos"] = "spiral"
    result = run_cli("train", str(write_config(tmp_path, cfg)))
    _assert_clean_error(
        result, "config.yaml", "train.lerning_rate", "did you mean 'train.learning_rate'", "spiral"
    )


def test_non_utf8_text_names_the_byte(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    result = run_cli("tokenizer", "train", "--kind", "char", str(bad), "--out", str(tmp_path / "tok"))
    _assert_clean_error(result, "latin1.txt", "byte 3")


def test_missing_checkpoint(tmp_path):
    _assert_clean_error(run_cli("generate", str(tmp_path / "ck"), "hi"), "ck", "no such checkpoint")


def test_debug_shows_the_traceback(tmp_path, capsys):
    result = run_cli("--debug", "generate", str(tmp_path / "ck"), "hi")
    assert result.returncode != 0 and "Traceback" in result.stderr
    with pytest.raises(TinylmError, match="no such checkpoint"):  # after the command too, in-process
        main(["generate", str(tmp_path / "ck"), "hi", "--debug"])


@pytest.mark.parametrize("breakage", ["data", "config"])
def test_a_failed_resume_loses_nothing_already_saved(tmp_path, qa_file, breakage):
    cfg = tiny_config(tmp_path, qa_file, checkpoint={"monitor": "train_loss", "resume": "auto"})
    path = write_config(tmp_path, cfg)
    assert run_cli("train", str(path)).returncode == 0
    last = tmp_path / "run" / "checkpoints" / "last"
    before = (last / "model.safetensors").read_bytes()
    if breakage == "data":
        qa_file.write_text("{broken")
        result = run_cli("train", str(path), "--set", "train.max_steps=12")
    else:
        result = run_cli("train", str(path), "--set", "train.max_stepz=12")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (last / "model.safetensors").read_bytes() == before
    assert run_cli("generate", str(last), "what is item one", "--max-new-tokens", "3").returncode == 0
