"""progress.py, as CI logs and pipes see it: one line per step with new numbers, only those numbers."""

from tinylm.train.progress import Progress


def test_a_line_shows_only_what_the_step_brought(capsys):
    progress = Progress(100)
    progress.update(50, {"train_loss": 2.0, "tokens_per_sec": 1234.0})
    progress.update(60, {"train_loss": 2.0, "tokens_per_sec": 1234.0, "val_loss": 1.5, "val_rougeL": 0.5})
    progress.update(60, {"train_loss": 2.0, "tokens_per_sec": 1234.0, "val_loss": 1.5, "val_rougeL": 0.5})
    progress.update(70, {"train_loss": 1.9, "tokens_per_sec": 1300.0, "val_loss": 1.5, "val_rougeL": 0.5})
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3  # nothing new at the repeated step
    assert lines[0].startswith("step 50/100 loss 2.0000 | 1,234 tok/s eta ")
    assert lines[1].startswith("step 60/100 val 1.5000 | rougeL 0.500 eta ")  # not step 50's loss again
    assert lines[2].startswith("step 70/100 loss 1.9000 | 1,300 tok/s eta ")
