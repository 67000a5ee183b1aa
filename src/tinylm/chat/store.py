"""Chat persistence: conversations in one SQLite file, resumable by session id.

The default file is ``$TINYLM_HOME/chat.sqlite`` (``~/.cache/tinylm/chat.sqlite``). Every write is its own
transaction, committed before the call returns: the chat stores the user's message when it is sent and the
assistant's reply only once it is complete, so a process killed mid-reply loses that reply and nothing
else. SQLite's journal makes each commit all-or-nothing, so the file always opens.

Schema (version 1): ``schema_version(version)``, ``sessions(id, model, system, created, updated)`` and
``messages(id, session_id, role, content, created)``, where messages are user and assistant turns in the
order they were said (the system prompt lives on the session). A file written by a newer tinylm is refused
rather than guessed at. The file is opened through `tinylm.sqlite.connect` (read-only for a listing), so a
folder, a FIFO, a corrupted or read-only file is refused with a message naming it, and a write that the
file or its disk refuses later (locked, full) is a StoreError, not a traceback.

This module stores text; it does not generate, count tokens or decide what fits a context window.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tinylm.errors import TinylmError
from tinylm.sqlite import connect, errors

SCHEMA_VERSION = 1
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    system TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX messages_by_session ON messages(session_id, id);
"""


class StoreError(TinylmError):
    """The chat database cannot be opened, is not a tinylm chat database, or a session id is malformed."""


@dataclass(frozen=True)
class SessionInfo:
    """One stored conversation, as `ChatStore.sessions` lists it."""

    id: str
    model: str
    system: str | None
    created: float
    updated: float
    messages: int
    first_question: str | None


def default_db_path() -> Path:
    """$TINYLM_HOME/chat.sqlite, read at call time."""
    from tinylm.paths import tinylm_home

    return tinylm_home() / "chat.sqlite"


def check_session_id(session_id: str) -> str:
    if not SESSION_ID_RE.fullmatch(session_id):
        raise StoreError(f"session id: expected 1-64 letters, digits, '_', '.' or '-', found {session_id!r}")
    return session_id


class ChatStore:
    """An open chat database. Use as a context manager, or call `close`."""

    def __init__(self, path: str | Path, *, write: bool = True):
        """Open (with `write`, create) the database at `path`; without `write` it is opened read-only and a
        missing file is an error, so listing sessions never makes a file."""
        self.path = Path(path)
        self.conn = connect(self.path, what="chat database", create=write, write=write, error=StoreError)
        self.conn.isolation_level = None  # explicit transactions below
        self.empty = False
        try:
            with self._errors():
                self.conn.execute("PRAGMA foreign_keys = ON")
                self._migrate(write)
        except BaseException:
            self.conn.close()
            raise

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- sessions -----------------------------------------------------------------------------------
    def session(self, session_id: str) -> SessionInfo | None:
        rows = self._session_rows("WHERE s.id = ?", (check_session_id(session_id),))
        return rows[0] if rows else None

    def sessions(self) -> list[SessionInfo]:
        """Every session, most recently updated first."""
        return self._session_rows("", ())

    def open_session(self, session_id: str, *, model: str, system: str | None) -> SessionInfo:
        """Create the session, or resume it; a `system` given here replaces the stored one."""
        check_session_id(session_id)
        now = time.time()
        with self._transaction():
            found = self.conn.execute("SELECT system FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if found is None:
                self.conn.execute(
                    "INSERT INTO sessions (id, model, system, created, updated) VALUES (?, ?, ?, ?, ?)",
                    (session_id, model, system, now, now),
                )
            else:
                self.conn.execute(
                    "UPDATE sessions SET model = ?, system = ? WHERE id = ?",
                    (model, found[0] if system is None else system, session_id),
                )
        info = self.session(session_id)
        assert info is not None
        return info

    # -- messages -----------------------------------------------------------------------------------
    def messages(self, session_id: str) -> list[dict[str, str]]:
        """The session's user and assistant messages, oldest first."""
        if self.empty:
            return []
        with self._errors():
            rows = self.conn.execute(
                "SELECT role, content FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            ).fetchall()
        return [{"role": role, "content": content} for role, content in rows]

    def add_message(self, session_id: str, role: str, content: str) -> None:
        """Append one message and commit it before returning."""
        now = time.time()
        with self._transaction():
            self.conn.execute(
                "INSERT INTO messages (session_id, role, content, created) VALUES (?, ?, ?, ?)",
                (session_id, role, content, now),
            )
            self.conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))

    def clear_messages(self, session_id: str) -> None:
        """Forget the session's messages (its system prompt stays)."""
        with self._transaction():
            self.conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            self.conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (time.time(), session_id))

    # -- helpers ------------------------------------------------------------------------------------
    def _errors(self) -> AbstractContextManager[None]:
        """SQLite errors the file or its disk cause (read-only, locked, full, corrupted) as StoreErrors."""
        return errors(self.path, "chat database", StoreError)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises (a failed write included)."""
        with self._errors():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    self.conn.execute("ROLLBACK")
                raise

    def _migrate(self, write: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not write:  # an empty file, opened to read: no sessions yet
            self.empty = True
            return
        if not tables:
            # one script, one transaction: the file holds the whole schema or none of it
            self.conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} INSERT INTO schema_version VALUES ({SCHEMA_VERSION}); COMMIT;"
            )
            return
        if "schema_version" not in tables:
            raise StoreError(
                f"{self.path}: not a tinylm chat database (no schema_version table; tables: "
                f"{', '.join(sorted(tables))}); pass another file with --db"
            )
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row[0] != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: chat database schema version {row[0]}, this tinylm reads version "
                f"{SCHEMA_VERSION}; use the tinylm that wrote it, or another file with --db"
            )

    def _session_rows(self, where: str, params: tuple) -> list[SessionInfo]:
        if self.empty:
            return []
        with self._errors():
            rows = self.conn.execute(
                f"""
                SELECT s.id, s.model, s.system, s.created, s.updated,
                       (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id),
                       (SELECT content FROM messages m WHERE m.session_id = s.id AND m.role = 'user'
                        ORDER BY m.id LIMIT 1)
                FROM sessions s {where} ORDER BY s.updated DESC, s.id
                """,
                params,
            ).fetchall()
        return [SessionInfo(*row) for row in rows]
