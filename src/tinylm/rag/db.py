"""The RAG database: one SQLite file holding the settings, the documents and their chunks (and, for the
sqlite backend, the vectors; see `tinylm.rag.store`).

Tables: `meta` (key/value settings: format version, embedder and dimension, chunk size and overlap, vector
backend), `documents` (absolute path, sha256, mtime, the chunking it was cut with), `chunks` (text, position
in the document, section label, token span) and `vectors` (chunk id → float32 blob). Ids are AUTOINCREMENT,
so a chunk id is never reused: a Qdrant point left behind by a failed write can never name another chunk.

This module stores and fetches rows; it does not read files, embed or rank.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tinylm.errors import DataError
from tinylm.rag.chunking import Chunk
from tinylm.rag.documents import Document

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

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> RagDB:
        """Open the database at `path`; with `create`, make a new one when the file does not exist."""
        path = Path(path).expanduser().resolve()
        new = not path.exists() or path.stat().st_size == 0
        if new and not create:
            raise DataError(
                f"{path}: no such RAG database; build one with `tinylm rag index PATHS --db {path}`"
            )
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a RAG database file")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            if new:
                conn.executescript(SCHEMA)
                with conn:
                    conn.execute("INSERT INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        except sqlite3.DatabaseError as err:
            conn.close()
            raise DataError(f"{path}: not a tinylm RAG database ({err})") from None
        if row is None or row[0] != str(FORMAT_VERSION):
            conn.close()
            found = "no format version" if row is None else f"format version {row[0]}"
            raise DataError(
                f"{path}: expected a tinylm RAG database of format version {FORMAT_VERSION}, found {found}"
            )
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RagDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> sqlite3.Connection:
        """A context manager that commits on success and rolls back on an exception."""
        return self.conn

    # -- settings -----------------------------------------------------------------------------------
    def settings(self) -> Settings | None:
        """The settings the database was built with, or None before its first document."""
        meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if "embedder" not in meta:
            return None
        values = {f.name: f.type for f in fields(Settings)}
        return Settings(**{k: int(meta[k]) if values[k] == "int" else meta[k] for k in values if k in meta})

    def save_settings(self, settings: Settings) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, str(v)) for k, v in asdict(settings).items()],
            )

    # -- documents and chunks -----------------------------------------------------------------------
    def documents(self) -> dict[str, StoredDocument]:
        """Every indexed document by its absolute path."""
        rows = self.conn.execute(
            "SELECT id, path, sha256, mtime, chunk_size, overlap FROM documents ORDER BY path"
        ).fetchall()
        return {row[1]: StoredDocument(*row) for row in rows}

    def chunk_ids(self, path: str) -> list[int]:
        rows = self.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ?", (path,)
        ).fetchall()
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
        with self.conn:
            self.conn.execute("UPDATE documents SET mtime = ? WHERE path = ?", (mtime, path))

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """The chunks with these ids (unknown ids are left out), with their document's path."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(
            "SELECT c.id, d.path, c.section, c.position, c.token_start, c.token_end, c.text "
            f"FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
            [int(i) for i in ids],
        ).fetchall()
        return {row[0]: StoredChunk(*row) for row in rows}
