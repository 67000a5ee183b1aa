"""inspect.py (`tinylm inspect-data`): which tokens carry loss, marked even without colours, and the counts
of truncated examples and of those held out for validation."""

from tests.conftest import tiny_config, write_config
from tinylm.cli import main


def test_loss_tokens_are_marked_and_truncation_counted(tmp_path, qa_file, capsys):
    cfg = tiny_config(tmp_path, qa_file, data={"max_length": 64})
    assert main(["inspect-data", str(write_config(tmp_path, cfg)), "--examples", "2"]) == 0
    out = capsys.readouterr().out  # captured: no terminal, no colours
    assert "tokens carrying loss are «between guillemets»" in out
    assert "Q: what is item one\nA:«item one is red<|endoftext|>»" in out  # the answer and EOS only
    assert "train examples 5, truncated 0 (0.0%), missing end-of-sequence 0" in out
    short = write_config(tmp_path, tiny_config(tmp_path, qa_file, data={"max_length": 12}), "short.yaml")
    assert main(["inspect-data", str(short), "--set", "data.val_fraction=0.4"]) == 0
    out = capsys.readouterr().out
    assert "train examples 3 (+2 held out for validation), truncated 3 (100.0%)" in out
    assert "some examples are longer than data.max_length" in out
