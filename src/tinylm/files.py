"""Checks on the paths a user hands tinylm, before anything is opened.

A reader given a FIFO, a socket or a device would block forever or read without end, so every input file
goes through `check_input_file` first: it must exist and be a regular file (a link to one is fine), and
it is refused by its type otherwise, with the path named. `check_output_dir` does the same for a folder
tinylm will write into. Every file and folder tinylm writes goes through `written_aside` (a file) or
`dir_written_aside` (a folder): written under a temporary sibling, flushed, then renamed into place.
This module knows no file format; it checks paths and moves what others wrote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from tinylm.errors import DataError, TinylmError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


def kind_of(mode: int) -> str:
    """What a stat mode is, in words ("a FIFO (named pipe)", "a directory", "a regular file", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_input_file(path: str | Path, what: str = "file", error: type[TinylmError] = DataError) -> Path:
    """`path` if it names a readable regular file; else `error` saying what was found there."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as err:  # a loop of links, a name too long, a folder we may not enter
        raise error(f"{path}: cannot open the {what}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        expected = "a regular file" if what == "file" else f"a {what} (a regular file)"
        raise error(f"{path}: expected {expected}, found {kind_of(mode)}")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: the {what} is not readable (permission denied)")
    return path


def check_output_dir(
    path: str | Path, what: str = "output folder", error: type[TinylmError] = TinylmError
) -> Path:
    """`path` if it is a folder tinylm may write into, or does not exist yet (and its parent is no file)."""
    path = Path(path)
    for p in (path, *path.parents):
        try:
            mode = p.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):  # not there yet, or below a file (found next)
            continue
        except OSError as err:
            raise error(f"{path}: cannot use it as the {what}: {err.strerror}") from None
        if not stat.S_ISDIR(mode):
            where = "" if p == path else f" ({p} is {kind_of(mode)})"
            raise error(f"{path}: expected a folder for the {what}, found {kind_of(mode)}{where}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise error(f"{path}: the {what} cannot be written ({p}: permission denied)")
        return path
    return path


@contextlib.contextmanager
def written_aside(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write into; when the block ends without an error it is flushed
    and renamed over `path`, so a reader (or a process killed mid-write) sees the old file or the new
    one, never half of one. On an error the temporary is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def dir_written_aside(path: str | Path, *, replace: bool = True, what: str = "folder") -> Iterator[Path]:
    """A new temporary sibling folder of `path` to write into; when the block ends without an error every
    file in it is flushed and the folder is renamed into place, so a process killed midway leaves the old
    folder (or nothing), never half of one. With `replace`, a full folder already at `path` is moved aside
    first (`.NAME.old-PID`) and removed once the new one is in place; without it only a missing or empty
    folder is replaced (a TinylmError naming `what` otherwise). On an error the temporary is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process of this id that was killed
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if replace and path.is_dir() and any(path.iterdir()):
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # replaces nothing but an empty folder, even one that filled up since it was checked
                os.rename(tmp, path)
            except OSError as e:
                raise TinylmError(
                    f"{path}: could not move the {what} into place ({e.strerror}); nothing was replaced"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory` to disk (before the rename that publishes it)."""
    for f in directory.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `written_aside`."""
    with written_aside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a temporary named after it may be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True
