"""The RAG database: one SQLite file holding the settings, the documents and their chunks (and, for the
sqlite backend, the vectors; see `tinylm.rag.store`).

Tables: `meta` (key/value settings: format version, embedder and dimension, chunk size and overlap, vector
backend), `documents` (absolute path, sha256, mtime, the chunking it was cut with), `chunks` (text, position
in the document, section label, token span), `vectors` (chunk id → float32 blob) and `chunks_fts`, the
lexical index of the chunk texts that triggers keep in step (`tinylm.rag.lexical`). Ids are AUTOINCREMENT,
so a chunk id is never reused: a Qdrant point left behind by a failed write can never name another chunk.
A database made before the lexical index gets it when opened to write (`tinylm rag index` or `tinylm rag
upgrade`); opened to read, it is refused with the command that upgrades it.

The file is opened through `tinylm.sqlite.connect` (to write when indexing, read-only otherwise), so a
folder, a FIFO, another kind of file or a read-only one is refused with a message naming it; SQLite errors
the file or its disk cause later (locked, full, corrupted) become DataErrors the same way.

This module stores and fetches rows; it does not read files, embed or rank.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tinylm.errors import DataError
from tinylm.rag.chunking import Chunk
from tinylm.rag.documents import Document
from tinylm.rag.lexical import ensure_index, has_index
from tinylm.sqlite import connect, errors

FORMAT_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    mtime REAL NOT NULL,
    chunk_size INTEGER NOT NULL,
    overlap INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    section TEXT NOT NULL,
    token_start INTEGER NOT NULL,
    token_end INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks(document_id);
CREATE TABLE IF NOT EXISTS vectors (
    chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Settings:
    """What a database was built with; every later index, query and eval must use the same."""

    embedder: str
    dim: int
    chunk_size: int
    overlap: int
    backend: str = "sqlite"
    url: str = ""
    """The Qdrant server; empty means local mode in the folder `<db>.qdrant` beside the database."""
    collection: str = ""


@dataclass(frozen=True)
class StoredDocument:
    id: int
    path: str
    sha256: str
    mtime: float
    chunk_size: int
    overlap: int


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    section: str
    position: int
    start: int
    end: int
    text: str


class RagDB:
    """An open RAG database. Use `with db.transaction():` around writes that must land together."""

    def __init__(self, path: Path, conn: sqlite3.Connection, upgraded: bool = False):
        self.path = path
        self.conn = conn
        self.upgraded = upgraded
        """Whether opening it added the lexical index (a database of an older tinylm, opened to write)."""

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False, write: bool | None = None) -> RagDB:
        """Open the database at `path`; with `create`, make a new one when the file does not exist, and
        open it to write (without, it is opened read-only and nothing is created; `write=True` opens an
        existing one to write). Opened to write, a database without the lexical index gets it."""
        path = Path(path).expanduser().resolve()
        write = create if write is None else write
        if not create and not os.path.lexists(path):
            raise DataError(_missing(path, "no such RAG database"))
        conn = connect(path, what="RAG database", create=create, write=write, error=DataError)
        try:
            with errors(path, "RAG database", DataError):
                conn.execute("PRAGMA foreign_keys = ON")
                row = _format_version(conn, path, create)
                current = row is not None and row[0] == str(FORMAT_VERSION)
                upgraded = current and write and ensure_index(conn)
                problem = _problem(path, conn, row)
        except BaseException:
            conn.close()
            raise
        if problem:
            conn.close()
            raise DataError(problem)
        return cls(path, conn, upgraded)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RagDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Commit the block's writes on success, roll them back on an exception; a write the file or its
        disk refuses (read-only, locked, full) is a DataError naming the database."""
        with self.errors(), self.conn:
            yield self.conn

    def errors(self) -> AbstractContextManager[None]:
        """SQLite errors the file or its disk cause inside the block, as DataErrors naming the database."""
        return errors(self.path, "RAG database", DataError)

    # -- settings -----------------------------------------------------------------------------------
    def settings(self) -> Settings | None:
        """The settings the database was built with, or None before its first document."""
        meta = dict(self._rows("SELECT key, value FROM meta"))
        if "embedder" not in meta:
            return None
        values = {f.name: f.type for f in fields(Settings)}
        return Settings(**{k: int(meta[k]) if values[k] == "int" else meta[k] for k in values if k in meta})

    def save_settings(self, settings: Settings) -> None:
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, str(v)) for k, v in asdict(settings).items()],
            )

    # -- documents and chunks -----------------------------------------------------------------------
    def documents(self) -> dict[str, StoredDocument]:
        """Every indexed document by its absolute path."""
        rows = self._rows("SELECT id, path, sha256, mtime, chunk_size, overlap FROM documents ORDER BY path")
        return {row[1]: StoredDocument(*row) for row in rows}

    def chunk_ids(self, path: str) -> list[int]:
        rows = self._rows(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ?", (path,)
        )
        return [row[0] for row in rows]

    def add_document(
        self, document: Document, chunks: Sequence[Chunk], chunk_size: int, overlap: int
    ) -> list[int]:
        """Insert a document and its chunks (the caller holds the transaction); the new chunk ids in order."""
        cursor = self.conn.execute(
            "INSERT INTO documents (path, sha256, mtime, chunk_size, overlap) VALUES (?, ?, ?, ?, ?)",
            (str(document.path), document.sha256, document.mtime, chunk_size, overlap),
        )
        ids = []
        for c in chunks:
            row = self.conn.execute(
                "INSERT INTO chunks (document_id, position, section, token_start, token_end, text) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (cursor.lastrowid, c.position, c.section, c.start, c.end, c.text),
            )
            ids.append(int(row.lastrowid))
        return ids

    def remove_document(self, path: str) -> None:
        """Delete a document; its chunks (and sqlite vectors) go with it."""
        self.conn.execute("DELETE FROM documents WHERE path = ?", (path,))

    def touch(self, path: str, mtime: float) -> None:
        with self.transaction():
            self.conn.execute("UPDATE documents SET mtime = ? WHERE path = ?", (mtime, path))

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """The chunks with these ids (unknown ids are left out), with their document's path."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._rows(
            "SELECT c.id, d.path, c.section, c.position, c.token_start, c.token_end, c.text "
            f"FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
            [int(i) for i in ids],
        )
        return {row[0]: StoredChunk(*row) for row in rows}

    def chunk_counts(self) -> dict[str, int]:
        """How many chunks each indexed document has, by its absolute path."""
        return dict(
            self._rows(
                "SELECT d.path, COUNT(c.id) FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
                "GROUP BY d.id"
            )
        )

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self.errors():
            return self.conn.execute(sql, params).fetchall()


def _missing(path: Path, found: str) -> str:
    return f"{path}: {found}; build one with `tinylm rag index PATHS --db {path}`"


def _problem(path: Path, conn: sqlite3.Connection, row: tuple[str] | None) -> str | None:
    """Why the open database cannot be used: another format version, or no lexical index (made by an
    older tinylm and opened to read); None when it can."""
    if row is None or row[0] != str(FORMAT_VERSION):
        found = "no format version" if row is None else f"format version {row[0]}"
        return f"{path}: expected a tinylm RAG database of format version {FORMAT_VERSION}, found {found}"
    if has_index(conn):
        return None
    return (
        f"{path}: made by an older tinylm, without the lexical index that retrieval needs; upgrade it in "
        f"place with `tinylm rag upgrade --db {path}` (or `tinylm rag index` it again)"
    )


def _format_version(conn: sqlite3.Connection, path: Path, create: bool) -> tuple[str] | None:
    """The database's format version row; an empty file opened with `create` gets the schema first."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and not create:
        raise DataError(_missing(path, "an empty file, not a RAG database yet"))
    if not tables:
        conn.executescript(SCHEMA)
        ensure_index(conn)  # a new database is born with its lexical index: nothing to upgrade
        with conn:
            conn.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
    elif "meta" not in tables:
        raise DataError(
            f"{path}: not a tinylm RAG database (no meta table; tables: {', '.join(sorted(tables))}); "
            "index into another --db"
        )
    return conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
