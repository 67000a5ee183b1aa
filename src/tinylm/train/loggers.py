"""Metric loggers for a run: CSV always, TensorBoard and Weights & Biases (offline by default) when asked.

Only the rank-0 process logs. The CSV log is the source for `tinylm plot` and for resume checks: on
resume, rows after the resumed step are dropped so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.csv"  # in the run folder: step,name,value rows


class CSVLog:
    """Appends `step,name,value` rows to RUN_DIR/metrics.csv (long format: any metric, any time)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,name,value\n")

    def log(self, metrics: dict[str, float], step: int) -> None:
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            for k, v in metrics.items():
                w.writerow([step, k, repr(float(v))])

    def truncate_after(self, step: int) -> None:
        rows = read_metrics(self.path)
        with self.path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "name", "value"])
            for s, name, value in rows:
                if s <= step:
                    w.writerow([s, name, repr(value)])


def read_metrics(path: Path) -> list[tuple[int, str, float]]:
    with Path(path).open(newline="") as f:
        return [(int(r["step"]), r["name"], float(r["value"])) for r in csv.DictReader(f)]


class TensorBoardLog:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()


class WandbLog:
    def __init__(self, run_dir: Path, settings: Any, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            from tinylm.errors import TinylmError

            raise TinylmError(
                "logger.wandb is set but wandb is not installed: pip install 'tinylm[wandb]'"
            ) from None
        self.run = wandb.init(
            project=settings.project,
            name=settings.name,
            group=settings.group,
            job_type=settings.job_type,
            mode=settings.mode,
            dir=str(run_dir),
            config=config,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)


class Loggers:
    """Fans one `log(metrics, step)` call out to every configured logger."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        for sink in self.sinks:
            if isinstance(sink, WandbLog):
                sink.run.finish()
