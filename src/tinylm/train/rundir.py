"""The run folder (`out_dir`): what a training run may write there, and what it must leave alone.

A run owns `config.yaml`, `metrics.csv`, `tensorboard/`, `wandb/` and `checkpoints/` under its out_dir.
Before it writes anything, `claim_run_dir` checks that the folder is one a run may use:

- an out_dir that is a file, or lies below one, is refused;
- a new run (no resume) in a folder that holds an earlier run's checkpoints is refused: continuing it is
  `checkpoint.resume: auto`, a fresh start is a new out_dir; nothing of the earlier run is deleted;
- a config.yaml that `tinylm train` did not write is never overwritten;
- a resume from a checkpoint older than others of the same run is refused (they would be overwritten);
- temporaries that a killed save left behind (`.step-000010.tmp-PID`) are removed when their process is
  gone, and the metrics.csv of a run that died before its first checkpoint is kept aside, not appended to.

This module does not train or save checkpoints; it only guards the folder.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from tinylm.checkpoint import RUN_CONFIG_FILE
from tinylm.config import CONFIG_HEADER
from tinylm.errors import TinylmError
from tinylm.files import check_output_dir, pid_alive
from tinylm.train.loggers import METRICS_FILE

_TEMPORARY = re.compile(r"\.(step-\d+|last|best)\.(tmp|old)-(\d+)")


def claim_run_dir(run_dir: Path, resume_from: Path | None) -> list[str]:
    """Check `run_dir` for a run (resumed from `resume_from`, or new) and tidy what tinylm left there;
    returns notes for the user (what was cleared or kept aside). Raises TinylmError when it cannot be used."""
    check_output_dir(run_dir, "out_dir")
    ckpt_root = run_dir / "checkpoints"
    steps = sorted(p.name for p in ckpt_root.glob("step-*")) if ckpt_root.is_dir() else []
    links = [name for name in ("last", "best") if (ckpt_root / name).is_symlink()]
    if resume_from is None and (steps or links):
        shown = ", ".join((steps + links)[:4]) + (", ..." if len(steps) + len(links) > 4 else "")
        raise TinylmError(
            f"out_dir {run_dir} already holds the checkpoints of an earlier run ({shown}); continue that run "
            f"with `--set checkpoint.resume=auto`, or start a new one in another folder (`--set out_dir=...`). "
            "tinylm does not delete or mix runs"
        )
    if resume_from is not None:
        _refuse_rewinding(ckpt_root, resume_from, steps)
    config = run_dir / RUN_CONFIG_FILE
    if config.exists() and not steps and not _written_by_train(config):
        raise TinylmError(
            f"out_dir {run_dir} holds a config.yaml that `tinylm train` did not write; a run would overwrite "
            "it: choose another out_dir (`--set out_dir=...`)"
        )
    notes = clear_temporaries(ckpt_root)
    metrics = run_dir / METRICS_FILE
    if resume_from is None and metrics.is_file():  # a run that died before its first checkpoint
        aside = (
            run_dir / f"metrics.{time.strftime('%Y%m%d-%H%M%S', time.localtime(metrics.stat().st_mtime))}.csv"
        )
        metrics.rename(aside)
        notes.append(f"kept the metrics.csv of an earlier run that saved no checkpoint as {aside.name}")
    return notes


def _written_by_train(config: Path) -> bool:
    try:
        with open(config, encoding="utf-8", errors="replace") as f:
            return f.readline() == CONFIG_HEADER.rstrip("\n") + "\n"
    except OSError:
        return False


def _refuse_rewinding(ckpt_root: Path, resume_from: Path, steps: list[str]) -> None:
    """Resuming from an older checkpoint of this run would overwrite the later ones: refuse."""
    try:
        resumed = resume_from.resolve()
    except OSError:
        return
    if resumed.parent != ckpt_root.resolve() or not resumed.name.startswith("step-"):
        return
    later = [s for s in steps if s > resumed.name]
    if later:
        raise TinylmError(
            f"checkpoint.resume: {resume_from} is older than {', '.join(later[:3])} of the same run, which "
            "the resumed run would overwrite; resume from `auto` (the last one), or copy the checkpoint "
            "into a new out_dir and resume there"
        )


def clear_temporaries(ckpt_root: Path) -> list[str]:
    """Remove what killed saves left under `ckpt_root` (`.step-N.tmp-PID`, `.last.tmp-PID`, moved-aside
    `.step-N.old-PID`) whose process is gone; returns a note per removal."""
    notes: list[str] = []
    if not ckpt_root.is_dir():
        return notes
    for p in ckpt_root.iterdir():
        m = _TEMPORARY.fullmatch(p.name)
        if m is None or pid_alive(int(m.group(3))):
            continue
        target = ckpt_root / m.group(1)
        if m.group(2) == "old" and not target.exists() and not target.is_symlink():
            p.rename(target)  # killed between moving the old copy aside and putting the new one in place
            notes.append(f"restored {target.name} from {p.name}, left by a save that was killed")
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        notes.append(f"removed {p.name}, left by a save that was killed")
    return notes
