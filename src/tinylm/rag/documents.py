"""Read the files a RAG index is built from into `Document`s: text sections that know where they came from.

.txt/.md files are one section each; .html/.htm lose their tags (stdlib `html.parser`; script and style are
dropped); .pdf files give a section per page (pypdf); .json/.jsonl files give a section per record, its text
under `text_key`. Folders are walked for these suffixes, skipping hidden files and folders, and noting any
FIFO, socket, device or broken link (never opened: a FIFO would block the read). Every problem is a
`DataError` naming the file, the record or line and the key.

This module does not chunk, embed or store anything.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from tinylm.data.formats import (
    as_object,
    describe,
    jsonl_records,
    numbered,
    read_json,
    read_text,
    string_field,
)
from tinylm.errors import DataError
from tinylm.files import check_input_file, kind_of

SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf", ".json", ".jsonl")


@dataclass(frozen=True)
class Section:
    """A run of text inside a file; `label` says where ("" for a whole file, "page 2", "line 5", "record 3")."""

    label: str
    text: str


@dataclass(frozen=True)
class Document:
    """A file's identity (absolute path, sha256 of its bytes, mtime) and its text sections."""

    path: Path
    sha256: str
    mtime: float
    sections: tuple[Section, ...]


def find_files(paths: Iterable[str | Path], notes: list[str] | None = None) -> list[Path]:
    """The absolute paths of the supported files among `paths`, folders walked, sorted and without repeats.

    An empty folder gives no files (so a re-index can remove what was in it); a missing path is an error,
    and so is a named path that is not a regular file (a FIFO would block the read forever). A FIFO, socket,
    device or broken link found while walking a folder is skipped, with a line about it added to `notes`.
    """
    found: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found.update(_walk(path.resolve(), notes if notes is not None else []))
        elif not os.path.lexists(path):
            raise DataError(f"{given}: file or folder not found")
        else:
            check_input_file(path, "document", DataError)  # named as given, not as its link resolves
            _check_suffix(path.resolve())  # the suffix `read_document` will go by
            found.add(path.resolve())
    return sorted(found)


def _walk(root: Path, notes: list[str]) -> Iterator[Path]:
    """The supported regular files under `root`, hidden ones left out; other kinds of file are noted."""
    for f in root.rglob("*"):
        if f.suffix.lower() not in SUFFIXES or any(p.startswith(".") for p in f.relative_to(root).parts):
            continue
        if f.is_file():
            yield f
        elif not f.is_dir():
            try:
                kind = kind_of(f.stat().st_mode)
            except OSError:
                kind = "a broken link" if f.is_symlink() else "not readable"
            notes.append(f"{f}: skipped, {kind} is not a document file")


def file_sha256(path: Path) -> str:
    """The hex sha256 of the file's bytes: what tells a changed file from an unchanged one."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file: {err.strerror}") from None


def read_document(path: Path, *, text_key: str = "text") -> Document:
    """Read one supported file into a Document; a file with no text at all is an error."""
    suffix = _check_suffix(path)
    if suffix == ".pdf":
        sections = _pdf_sections(path)
    elif suffix in (".json", ".jsonl"):
        sections = _record_sections(path, suffix, text_key)
    else:
        text = read_text(path)
        sections = [Section("", _html_text(path, text) if suffix in (".html", ".htm") else text)]
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        hint = " (a scanned PDF has no text layer)" if suffix == ".pdf" else ""
        raise DataError(f"{path}: no text to index; the file is empty{hint}")
    return Document(path, file_sha256(path), path.stat().st_mtime, tuple(sections))


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        found = repr(suffix) if suffix else "a file with no suffix"
        raise DataError(f"{path}: unsupported file type {found}; supported: {', '.join(SUFFIXES)}")
    return suffix


def _record_sections(path: Path, suffix: str, text_key: str) -> list[Section]:
    """One section per record: a .jsonl line, or an item of a .json list (or the .json's single object)."""
    if suffix == ".jsonl":
        records = jsonl_records(path)
    else:
        data: Any = read_json(path)
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataError(
                f"{path}: expected a list of records or one object with key {text_key!r}, "
                f"found {describe(data)}"
            )
        records = numbered(data, "record")
    sections = []
    for where, record in records:
        text = string_field(path, where, as_object(path, where, record), text_key)
        if not text.strip():
            raise DataError(
                f"{path}: {where}: key {text_key!r}: expected text to index, found an empty string"
            )
        sections.append(Section(where, text))
    return sections


def _pdf_sections(path: Path) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    check_input_file(path, "PDF", DataError)  # pypdf opens the file itself
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise DataError(f"{path}: the PDF is encrypted; decrypt it first (e.g. `qpdf --decrypt`)")
        return [Section(f"page {i}", page.extract_text() or "") for i, page in enumerate(reader.pages, 1)]
    except DataError:
        raise
    except PyPdfError as err:
        raise DataError(f"{path}: not a readable PDF: {err}") from None
    except Exception as err:  # a damaged file trips pypdf in many ways (AttributeError, KeyError, ...)
        raise DataError(f"{path}: not a readable PDF ({type(err).__name__}: {err})") from None


_BLOCK_TAGS = (
    "address article aside blockquote br dd div dl dt figcaption footer form h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table td th title tr ul"
)


class _HTMLText(HTMLParser):
    """Collects the text of an HTML page, with a line break around each block element."""

    SKIP = frozenset({"script", "style", "noscript", "template"})
    BLOCK = frozenset(_BLOCK_TAGS.split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def _html_text(path: Path, html: str) -> str:
    """The visible text of an HTML page: tags, scripts and styles gone, entities decoded, one line per block."""
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as err:  # html.parser's way of refusing broken markup, e.g. "<![" sections
        raise DataError(f"{path}: not readable HTML: {err}") from None
    lines = (re.sub(r"\s+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)
