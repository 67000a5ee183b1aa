"""Training curves from a run's metrics.csv: reading with line-numbered errors, and the PNG."""

from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tinylm.errors import DataError
from tinylm.tools.plots import plot_run, read_curves
from tinylm.train.loggers import CSVLog


def _run(tmp_path: Path, steps: int = 30) -> Path:
    log = CSVLog(tmp_path / "run")
    for step in range(1, steps + 1):
        log.log(
            {"train_loss": 3.0 / step, "lr": 1e-3 * (1 - step / 40), "tokens_per_sec": 900.0 + step}, step
        )
        if step % 10 == 0:
            log.log({"val_loss": 3.2 / step, "val_ppl": 2.0}, step)
    return tmp_path / "run"


def test_curves_group_by_metric_in_step_order(tmp_path):
    curves = read_curves(_run(tmp_path))
    assert set(curves) == {"train_loss", "lr", "tokens_per_sec", "val_loss", "val_ppl"}
    assert [s for s, _ in curves["val_loss"]] == [10, 20, 30]
    assert curves["train_loss"][2] == (3, 1.0)


def test_plot_writes_a_png_with_three_panels(tmp_path):
    out = plot_run(_run(tmp_path), tmp_path / "curves.png")
    image = Image.open(out)
    assert image.format == "PNG" and 700 < image.width < 1200 and 800 < image.height < 1400
    assert (
        max(ImageStat.Stat(image.convert("L")).extrema[0])
        - min(ImageStat.Stat(image.convert("L")).extrema[0])
        > 100
    )
    assert plot_run(_run(tmp_path)) == tmp_path / "run" / "metrics.png"  # the default place


def test_only_loss_gives_one_panel(tmp_path):
    log = CSVLog(tmp_path / "run")
    log.log({"train_loss": 2.0}, 1)
    log.log({"train_loss": 1.5}, 2)
    small = Image.open(plot_run(tmp_path / "run"))
    assert small.height < 500


def test_missing_empty_and_malformed_logs_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_curves(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no metrics\.csv"):
        read_curves(tmp_path / "empty")
    CSVLog(tmp_path / "fresh")
    with pytest.raises(DataError, match="no metrics yet"):
        read_curves(tmp_path / "fresh")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.csv").write_text("step,name,value\n1,train_loss,2.0\nx,train_loss,1.0\n")
    with pytest.raises(DataError, match=r"metrics\.csv, line 3: expected step \(an integer\)"):
        read_curves(bad)
    (bad / "metrics.csv").write_text("when,what\n")
    with pytest.raises(DataError, match="line 1: expected the header 'step,name,value'"):
        read_curves(bad)
    log = CSVLog(tmp_path / "other")
    log.log({"val_ppl": 3.0}, 1)
    with pytest.raises(DataError, match=r"no train_loss, val_loss, lr or tokens_per_sec .*found val_ppl"):
        plot_run(tmp_path / "other")
    with pytest.raises(DataError, match=r"expected a \.png"):
        plot_run(_run(tmp_path), tmp_path / "curves.jpg")
