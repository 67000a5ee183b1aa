"""`tinylm plot RUN_DIR`: a run's training curves as one PNG, from the CSV log every run writes.

`tinylm train` appends `step,name,value` rows to RUN_DIR/metrics.csv (`tinylm.train.loggers.CSVLog`). This
module reads that file, checking each row (a bad one is reported by line), and draws up to three panels
sharing the step axis: train and validation loss, the learning rate, and tokens per second, each panel
only when the log has its metric. It draws with matplotlib's Agg renderer on a bare `Figure` (no pyplot
state, no display needed).

What this module does not do: no live plotting, no TensorBoard or W&B reading, no comparison of runs.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from tinylm.data.formats import read_text
from tinylm.errors import DataError
from tinylm.files import check_input_file, check_output_dir, kind_of, written_aside
from tinylm.train.loggers import METRICS_FILE

PANELS = (  # (title, y label, the metrics drawn in it)
    ("loss", "cross-entropy", ("train_loss", "val_loss")),
    ("learning rate", "lr", ("lr",)),
    ("throughput", "tokens / s", ("tokens_per_sec",)),
)


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{metric name: [(step, value), ...] in file order} from RUN_DIR/metrics.csv (or a CSV file given
    directly). Raises DataError naming the file and line for a missing, empty or malformed log."""
    path = _metrics_file(Path(run_dir))
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header != ["step", "name", "value"]:
            raise DataError(f"{path}, line 1: expected the header 'step,name,value', found {header!r}")
        for row in reader:
            if not row:
                continue
            try:
                step, name, value = int(row[0]), row[1], float(row[2])
            except (ValueError, IndexError):
                raise DataError(
                    f"{path}, line {reader.line_num}: expected step (an integer), name, value (a number); "
                    f"found {row!r}"[:500]
                ) from None
            curves[name].append((step, value))
    except csv.Error as e:  # a field past csv's size limit, a stray quote, ...
        raise DataError(f"{path}, line {reader.line_num}: not a CSV row: {e}") from None
    if not curves:
        raise DataError(f"{path}: no metrics yet (only the header); the run logs every log_every_n_steps")
    return dict(curves)


def _metrics_file(path: Path) -> Path:
    """RUN_DIR/metrics.csv, or `path` itself when it is a file; DataError if neither is a readable file."""
    expected = f"expected a run directory written by `tinylm train` (RUN_DIR/{METRICS_FILE})"
    if not path.exists():
        raise DataError(f"{path} does not exist: {expected}")
    if path.is_dir():
        if not (path / METRICS_FILE).exists():
            raise DataError(f"{path} has no {METRICS_FILE}: {expected}")
        path = path / METRICS_FILE
    return check_input_file(path, "metrics log")


def plot_run(run_dir: str | Path, out: str | Path | None = None, *, dpi: int = 110) -> Path:
    """Draw RUN_DIR's curves to `out` (default RUN_DIR/metrics.png) and return its path."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    out = _out_file(Path(out) if out is not None else _default_dir(run_dir) / "metrics.png")
    curves = read_curves(run_dir)
    panels = [p for p in PANELS if any(m in curves for m in p[2])]
    if not panels:
        known = ", ".join(sorted(curves))
        raise DataError(
            f"{run_dir}: no train_loss, val_loss, lr or tokens_per_sec in the log (found {known})"
        )
    fig = Figure(figsize=(8, 2.6 * len(panels) + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, ylabel, names) in zip(axes, panels):
        for name in names:
            if name not in curves:
                continue
            steps, values = zip(*curves[name])
            style = {"marker": "o", "markersize": 3} if name == "val_loss" or len(steps) < 20 else {}
            ax.plot(steps, values, label=name, **style)
            if name == "val_loss":
                best = min(curves[name], key=lambda sv: sv[1] if math.isfinite(sv[1]) else math.inf)
                ax.annotate(
                    f"best {best[1]:.4f} @ {best[0]}", best, textcoords="offset points", xytext=(4, 6)
                )
        ax.set_title(title, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len([n for n in names if n in curves]) > 1:
            ax.legend()
    axes[-1].set_xlabel("optimizer step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(run_dir.resolve().name if run_dir.is_dir() else str(run_dir))
    with written_aside(out) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png")
    return out


def _default_dir(run_dir: Path) -> Path:
    return run_dir if run_dir.is_dir() else run_dir.parent


def _out_file(out: Path) -> Path:
    """`out` if a PNG may be written there (a .png name, not a folder, not below a file); else DataError."""
    if out.suffix.lower() != ".png":
        raise DataError(f"--out {out}: expected a .png file, found the suffix {out.suffix or '(none)'!r}")
    check_output_dir(out.parent, "plot", DataError)
    if out.exists() and not out.is_file():
        raise DataError(f"--out {out}: expected a .png file, found {kind_of(out.stat().st_mode)}")
    return out
