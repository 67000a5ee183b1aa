"""Open the SQLite files a user names (the chat store, a RAG database), and say clearly what went wrong.

`connect` is the one door: it refuses a folder, a FIFO or a device by its type before SQLite touches it (a
FIFO would block the open), refuses a read-only file or folder when the caller will write, opens the file
read-only when it will not (so nothing is created), and reads the header once, so a corrupted file or
another kind of file fails at the open with a message naming it. `errors` turns the SQLite errors a file
or its disk can cause later (read-only, locked, disk full, corrupted) into the same kind of message;
errors of the caller's own making (a broken constraint, bad SQL) pass through unchanged.

This module knows no schema: the chat store and the RAG database check their own tables and versions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from tinylm.errors import TinylmError
from tinylm.files import check_input_file, check_output_dir

_ELSEWHERE = "move it aside or point --db elsewhere"


def connect(
    path: str | Path,
    *,
    what: str,
    create: bool = False,
    write: bool = True,
    error: type[TinylmError] = TinylmError,
) -> sqlite3.Connection:
    """An open connection to the SQLite file at `path` (`what` names it in messages: "chat database").

    create: a missing file (and its folder) is made; otherwise a missing file is an `error`.
    write: the caller will write, so a read-only file or folder is refused now; without it the file is
    opened read-only and never created.
    """
    assert write or not create, "creating a database means writing it"
    path = Path(path)
    exists = os.path.lexists(path)
    if exists:
        check_input_file(path, what, error)  # a folder, FIFO, socket or device is refused by its type
    elif not create:
        raise error(f"{path}: no such {what}")
    else:
        _make_folder(path, what, error)
    if write:
        _check_writable(path, exists, what, error)
    mode = ("rwc" if create else "rw") if write else "ro"
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode={mode}", uri=True)
    except sqlite3.Error as err:
        raise error(message(path, what, err)) from None
    try:
        with errors(path, what, error):
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # reads the header: is it SQLite?
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def errors(path: str | Path, what: str, error: type[TinylmError] = TinylmError) -> Iterator[None]:
    """Turn a SQLite error that the file or its disk caused inside the block into `error` naming `path`."""
    try:
        yield
    except sqlite3.Error as err:
        if _code(err) not in _CAUSED_BY_THE_FILE:
            raise
        raise error(message(Path(path), what, err)) from None


def message(path: Path, what: str, err: sqlite3.Error) -> str:
    """What a SQLite error on the file at `path` means to the user, and what to do about it."""
    code = _code(err)
    if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return f"{path}: not a SQLite database (corrupted, or another kind of file); {_ELSEWHERE}"
    if code in ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"):
        return f"{path}: read-only; the {what} cannot be written ({err}); make it writable or {_ELSEWHERE}"
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return f"{path}: the {what} is locked by another process ({err}); try again when it is done"
    if code == "SQLITE_FULL":
        return f"{path}: the disk is full; the {what} was left as it was; free some space and try again"
    if code == "SQLITE_CANTOPEN":
        return (
            f"{path}: cannot open the {what} or the journal SQLite writes beside it ({err}); "
            f"check that its folder exists and is writable, or {_ELSEWHERE}"
        )
    return f"{path}: the {what} cannot be used: {err}"


_CAUSED_BY_THE_FILE = frozenset(
    {
        *("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"),
        *("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_IOERR"),
        *("SQLITE_NOMEM", "SQLITE_PROTOCOL"),
    }
)


def _code(err: sqlite3.Error) -> str:
    """The primary result code's name ("SQLITE_READONLY" for SQLITE_READONLY_DBMOVED too), or ""."""
    name = getattr(err, "sqlite_errorname", None) or ""
    return "_".join(name.split("_")[:2])


def _make_folder(path: Path, what: str, error: type[TinylmError]) -> None:
    """Create the folder a new database goes into (its parents too), or say why it cannot be."""
    folder = path.parent
    check_output_dir(folder, f"folder of the {what}", error)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise error(f"{path}: cannot create the folder of the {what}: {err.strerror}") from None


def _check_writable(path: Path, exists: bool, what: str, error: type[TinylmError]) -> None:
    """Refuse a file, or a folder (SQLite writes its journal there), that this process may not write."""
    if exists and not os.access(path, os.W_OK):
        raise error(f"{path}: read-only; the {what} cannot be written; make it writable or {_ELSEWHERE}")
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(
            f"{path}: read-only folder {folder}; SQLite writes a journal beside the {what}, so the folder "
            f"must be writable; make it writable or {_ELSEWHERE}"
        )
