"""The live training display: step, loss, val loss (and BLEU / ROUGE-L / exact match when computed),
tokens/s and ETA.

On a terminal it is a rich progress bar updated in place; elsewhere (CI logs, pipes) it prints one line
at each step that brought new numbers, with only those numbers (a validation step shows its validation,
not the training loss of the last log step again). It only displays numbers the loop already computed;
it never touches the device.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.console = Console(stderr=True, soft_wrap=True)
        self.live = enabled and sys.stderr.isatty()
        self.last_printed: dict[str, float] = {}
        self.t0, self.start, self.total = time.perf_counter(), start, total
        self.bar = None
        if self.live:
            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, latest: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=_info(latest))
        elif latest and latest != self.last_printed:
            new = {k: v for k, v in latest.items() if self.last_printed.get(k) != v}
            self.last_printed = dict(latest)
            rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            self.console.print(f"step {step}/{self.total} {_info(new)} eta {eta:.0f}s", highlight=False)

    def shown(self, latest: dict[str, float]) -> None:
        """Numbers already printed on a line of their own: the next update does not repeat them."""
        self.last_printed = dict(latest)

    def note(self, text: str) -> None:
        if self.enabled and self.bar is not None:
            self.bar.console.print(text, highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _info(latest: dict[str, float]) -> str:
    parts = []
    for key, fmt in (
        ("train_loss", "loss {:.4f}"),
        ("val_loss", "val {:.4f}"),
        ("val_dpo_margin", "margin {:.3f}"),
        ("val_dpo_accuracy", "acc {:.2f}"),
        ("val_bleu", "bleu {:.3f}"),
        ("val_rougeL", "rougeL {:.3f}"),
        ("val_exact_match", "exact {:.3f}"),
        ("tokens_per_sec", "{:,.0f} tok/s"),
    ):
        if key in latest:
            parts.append(fmt.format(latest[key]))
    return " | ".join(parts)
