"""Tests for tinylm.rag.documents: every format read into sections, folder walking, and every error."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.unit.rag.corpus import CATS, FACTS, MOON, PDF_PAGES, write_corpus, write_pdf
from tinylm.errors import DataError
from tinylm.rag.documents import Section, find_files, read_document


def test_folders_are_walked_skipping_hidden_and_unsupported_files(tmp_path):
    root = write_corpus(tmp_path / "docs")
    files = find_files([root, root / "cats.md"])  # a file named twice is read once
    assert [f.relative_to(root).as_posix() for f in files] == [
        "cats.md",
        "facts.jsonl",
        "guide.pdf",
        "notes.txt",
        "sub/moon.txt",
        "volcano.html",
    ]
    assert all(f.is_absolute() for f in files)


def test_missing_paths_and_unsupported_files_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.md: file or folder not found"):
        find_files([tmp_path / "nope.md"])
    (tmp_path / "a.docx").write_text("x")
    with pytest.raises(DataError, match=r"a\.docx: unsupported file type '\.docx'; supported: \.txt"):
        find_files([tmp_path / "a.docx"])
    (tmp_path / "empty").mkdir()
    assert find_files([tmp_path / "empty"]) == []


def test_text_markdown_and_identity(tmp_path):
    root = write_corpus(tmp_path)
    doc = read_document(root / "cats.md")
    assert doc.sections == (Section("", CATS),)
    assert doc.sha256 == hashlib.sha256((root / "cats.md").read_bytes()).hexdigest()
    assert doc.mtime == (root / "cats.md").stat().st_mtime
    assert read_document(root / "sub" / "moon.txt").sections == (Section("", MOON),)


def test_html_loses_tags_scripts_and_styles_and_decodes_entities(tmp_path):
    text = read_document(write_corpus(tmp_path) / "volcano.html").sections[0].text
    assert text.split("\n") == [
        "Volcanoes",
        "Volcanoes",
        "A volcano is a rupture in the crust where lava & ash erupt.",
        "Mount Etna, on the island of Sicily, is the most active volcano in Europe.",
    ]


def test_pdf_gives_a_section_per_page(tmp_path):
    doc = read_document(write_pdf(tmp_path / "g.pdf", PDF_PAGES))
    assert doc.sections == (Section("page 1", PDF_PAGES[0]), Section("page 2", PDF_PAGES[1]))


def test_broken_pdf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\nthis is not a pdf body")
    with pytest.raises(DataError, match=r"bad\.pdf: not a readable PDF"):
        read_document(bad)


def test_jsonl_and_json_records_with_a_configurable_key(tmp_path):
    doc = read_document(write_corpus(tmp_path) / "facts.jsonl")
    assert doc.sections == tuple(Section(f"line {i}", r["text"]) for i, r in enumerate(FACTS, 1))
    body = tmp_path / "body.json"
    body.write_text(json.dumps([{"body": "first"}, {"body": "second"}]))
    assert read_document(body, text_key="body").sections == (
        Section("record 0", "first"),
        Section("record 1", "second"),
    )
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"body": "alone"}))
    assert read_document(one, text_key="body").sections == (Section("record 0", "alone"),)


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        (['{"text": "ok"}', '{"txt": "typo"}'], ["line 2", "missing key 'text'", "'txt'"]),
        (['{"text": "ok"}', '{"text": 7}'], ["line 2", "key 'text'", "expected a string, found int 7"]),
        (['{"text": "ok"}', '["a list"]'], ["line 2", "expected an object"]),
        (['{"text": "ok"}', '{"text": "  "}'], ["line 2", "key 'text'", "found an empty string"]),
        (['{"text": "ok"}', '{"text": "unclosed'], ["line 2", "invalid JSON"]),
    ],
)
def test_bad_records_name_file_line_and_key(tmp_path, lines, needles):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_document(bad)
    assert str(err.value).startswith(str(bad))
    for needle in needles:
        assert needle in str(err.value)


def test_json_of_the_wrong_shape_and_empty_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("42")
    with pytest.raises(
        DataError, match="expected a list of records or one object with key 'text', found int 42"
    ):
        read_document(bad)
    empty = tmp_path / "empty.md"
    empty.write_text(" \n")
    with pytest.raises(DataError, match=r"empty\.md: no text to index"):
        read_document(empty)
