"""`tinylm chat` and `tinylm rag index / ask / eval` against a hostile user: databases that are folders,
FIFOs, text, corrupted, foreign, newer or read-only; bad numbers; broken documents; bytes on stdin.

Each case feeds `tinylm` one bad input and expects exit code 2 with fragments of a one-line message (no
traceback). FIFOs are refused by their type before any open, so no case can hang; the few that need a real
process (stdin bytes, a FIFO) run one with a timeout. One real RAG database is built for the module (the
MiniLM embedder loads once); most RAG cases fail before the embedder is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adversarial.conftest import Outcome, cli, expect
from tests.conftest import REPO, run_cli
from tests.unit.chat.tiny import chat_checkpoint
from tests.unit.rag.corpus import one_torch_thread, tiny_checkpoint
from tinylm.chat.store import ChatStore, StoreError
from tinylm.cli import main
from tinylm.errors import DataError
from tinylm.rag import index
from tinylm.rag.db import RagDB

__all__ = ["one_torch_thread"]

CORRUPT = b"SQLite format 3\x00" + bytes(range(256)) * 8  # a SQLite header, then garbage
NOT_SQLITE = "not a SQLite database (corrupted, or another kind of file)"


@pytest.fixture(scope="module")
def chat_ck(tmp_path_factory) -> Path:
    """A tiny chat checkpoint (chatml template, 256-token window) whose greedy reply is 'a' repeated."""
    return chat_checkpoint(tmp_path_factory.mktemp("chat") / "ck", constant="a")


@pytest.fixture(scope="module")
def rag_ck(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ragck") / "ck", block_size=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two small documents, plus a FIFO and a broken link with document suffixes (skipped, never read)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "cats.md").write_text("# Cats\n\nCats sleep for twelve to sixteen hours a day.\n")
    (root / "moon.txt").write_text("The Moon orbits the Earth once every twenty-seven days.\n")
    os.mkfifo(root / "pipe.txt")
    (root / "gone.md").symlink_to(root / "nowhere.md")
    return root


@pytest.fixture(scope="module")
def rag_db(corpus: Path, tmp_path_factory) -> Path:
    """The one real RAG database of this module, indexed from `corpus` (its FIFO must not hang the walk)."""
    db = tmp_path_factory.mktemp("ragdb") / "rag.db"
    expect(cli("rag", "index", corpus, "--db", db), 0)
    return db


@pytest.fixture
def place(tmp_path: Path, monkeypatch) -> Path:
    """Things to point tinylm at: a FIFO, a folder, a text file, a corrupted and a foreign SQLite file, a
    newer chat database, an empty file, a plain file to put a path under. TINYLM_HOME is kept inside."""
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "text.txt").write_text("just some text, long enough to look like a header " * 4)
    (tmp_path / "corrupt.db").write_bytes(CORRUPT)
    (tmp_path / "empty.db").write_bytes(b"")
    with sqlite3.connect(tmp_path / "foreign.db") as raw:
        raw.execute("CREATE TABLE notes (x)")
    raw.close()
    ChatStore(tmp_path / "newer.sqlite").close()
    with sqlite3.connect(tmp_path / "newer.sqlite") as raw:
        raw.execute("INSERT INTO schema_version VALUES (99)")
    raw.close()
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# tinylm chat: the database, the session id, the generation options, --rag

CHAT_CASES = {  # name -> (extra arguments, in the place; expected fragments)
    "db is a folder": (
        ["--db", "{p}/dir"],
        ["dir", "expected a chat database (a regular file)", "directory"],
    ),
    "db is a FIFO": (["--db", "{p}/fifo"], ["fifo", "found a FIFO (named pipe)"]),
    "db is a text file": (["--db", "{p}/text.txt"], ["text.txt", NOT_SQLITE, "--db elsewhere"]),
    "db is corrupted": (["--db", "{p}/corrupt.db"], ["corrupt.db", NOT_SQLITE]),
    "db is foreign SQLite": (
        ["--db", "{p}/foreign.db"],
        ["foreign.db", "not a tinylm chat database", "notes"],
    ),
    "db from a newer tinylm": (["--db", "{p}/newer.sqlite"], ["schema version 99", "reads version 1"]),
    "db below a file": (["--db", "{p}/text.txt/chat.sqlite"], ["expected a folder", "text.txt"]),
    "session with a space": (["--session", "a b"], ["session id: expected", "'a b'"]),
    "session of 65 chars": (["--session", "x" * 65], ["session id: expected 1-64"]),
    "session with a slash": (["--session", "../up"], ["session id", "'../up'"]),
    "max-new-tokens 0": (["--max-new-tokens", "0"], ["max_new_tokens: expected >= 1, found 0"]),
    "max-new-tokens -5": (["--max-new-tokens", "-5"], ["max_new_tokens", "found -5"]),
    "max-new-tokens fills the window": (["--max-new-tokens", "256"], ["max_new_tokens", "context window"]),
    "temperature -1": (["--temperature", "-1"], ["temperature: expected >= 0", "-1.0"]),
    "temperature nan": (["--temperature", "nan"], ["temperature: expected a finite number", "nan"]),
    "temperature inf": (["--temperature", "inf"], ["temperature: expected a finite number", "inf"]),
    "top-p 0": (["--top-p", "0"], ["top_p: expected a value in (0, 1]", "0.0"]),
    "top-p 2": (["--top-p", "2"], ["top_p", "2.0"]),
    "seed -1": (["--seed", "-1"], ["seed: expected a value in 0..2**64-1", "-1"]),
    "seed 2**70": (["--seed", str(2**70)], ["seed", str(2**70)]),
    "prefix-cache-tokens -1": (
        ["--prefix-cache-tokens", "-1"],
        ["--prefix-cache-tokens: expected a number of tokens >= 0", "found -1"],
    ),
    "rag db missing": (["--rag", "{p}/none.db"], ["none.db", "no such RAG index", "tinylm rag index"]),
    "rag db is a folder": (["--rag", "{p}/dir"], ["expected a RAG database (a regular file)", "directory"]),
    "rag db is a FIFO": (["--rag", "{p}/fifo"], ["found a FIFO"]),
    "rag db is text": (["--rag", "{p}/text.txt"], ["text.txt", NOT_SQLITE]),
    "rag db is corrupted": (["--rag", "{p}/corrupt.db"], [NOT_SQLITE]),
    "rag db is empty": (["--rag", "{p}/empty.db"], ["an empty file, not a RAG database yet"]),
    "rag db is foreign": (["--rag", "{p}/foreign.db"], ["not a tinylm RAG database", "notes"]),
}


def _argv(args: list[str], place: Path) -> list[str]:
    return [a.replace("{p}", str(place)) for a in args]


@pytest.mark.parametrize("case", list(CHAT_CASES), ids=list(CHAT_CASES))
def test_chat_refuses(case: str, place: Path, chat_ck: Path) -> None:
    args, fragments = CHAT_CASES[case]
    theirs = {name: (place / name).read_bytes() for name in ("text.txt", "corrupt.db", "newer.sqlite")}
    base = ["chat", chat_ck, "--db", place / "chat.sqlite", "--max-new-tokens", "4"]
    expect(cli(*base, *_argv(args, place), stdin="hello\n"), 2, *fragments)
    assert theirs == {name: (place / name).read_bytes() for name in theirs}  # refused files left alone


LIST_CASES = {
    "missing --db": ("none.sqlite", ["none.sqlite", "no such chat database"]),
    "a corrupted --db": ("corrupt.db", ["corrupt.db", NOT_SQLITE]),
    "a text file": ("text.txt", [NOT_SQLITE]),
    "a FIFO": ("fifo", ["fifo", "chat database"]),
    "a folder": ("dir", ["dir", "chat database"]),
    "a newer --db": ("newer.sqlite", ["schema version 99"]),
}


@pytest.mark.parametrize("case", list(LIST_CASES), ids=list(LIST_CASES))
def test_chat_list_refuses(case: str, place: Path) -> None:
    name, fragments = LIST_CASES[case]
    expect(cli("chat", "--list", "--db", place / name), 2, *fragments)
    assert not (place / "none.sqlite").exists()  # listing creates nothing


def test_chat_without_a_model_and_a_missing_model(place: Path) -> None:
    expect(cli("chat", "--db", place / "c.sqlite"), 2, "expected a MODEL")
    expect(cli("chat", place / "no" / "ck", "--db", place / "c.sqlite"), 2, "ck")


def test_chat_works_and_lists_without_creating_anything(place: Path, chat_ck: Path) -> None:
    expect(cli("chat", "--list"), 0)  # no default database yet: says so, creates none
    assert not (place / "home" / "chat.sqlite").exists()
    db = place / "chat.sqlite"
    out = cli("chat", chat_ck, "--db", db, "--session", "s", "--max-new-tokens", "3", stdin="hi\n")
    expect(out, 0)
    assert out.out == "aaa\n"
    listed = cli("chat", "--list", "--db", db)
    expect(listed, 0)
    assert " s " in listed.out


# ----------------------------------------------------------------------------------------------------------
# stdin: bytes that are not UTF-8 stop the chat with an error; what was said before stays stored


def _cli_bytes(argv: list[str | Path], data: bytes) -> Outcome:
    """`tinylm ARGV` in this process with `data` as the bytes of its stdin."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        sys.stdin = saved
    return Outcome(code, out.getvalue(), err.getvalue())


STDIN_CASES = {  # name -> (stdin bytes, fragments, messages stored before the bad line)
    "latin-1 on line 2": (b"first\ncaf\xe9\nnever\n", ["stdin: not valid UTF-8", "line 2", "\\xe9"], 2),
    "a lone continuation byte": (b"\x80abc\n", ["line 1", "byte 1", "\\x80"], 0),
    "a cut multi-byte char": (b"ok\nok\n\xe2\x82\n", ["line 3"], 4),
    "UTF-16 with a BOM": ("hello\n".encode("utf-16"), ["stdin: not valid UTF-8", "line 1"], 0),
}


@pytest.mark.parametrize("case", list(STDIN_CASES), ids=list(STDIN_CASES))
def test_stdin_that_is_not_utf8(case: str, place: Path, chat_ck: Path) -> None:
    data, fragments, stored = STDIN_CASES[case]
    db = place / "chat.sqlite"
    argv = ["chat", chat_ck, "--db", db, "--session", "s", "--max-new-tokens", "2"]
    expect(_cli_bytes(argv, data), 2, *fragments, "what was said before it is stored")
    with ChatStore(db, write=False) as store:
        assert len(store.messages("s")) == stored


def _tinylm(*args: str | Path, stdin: bytes | None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m tinylm.cli ARGS` in a real process, `stdin` given as bytes (run_cli pipes text only)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tinylm.cli", *map(str, args)]
    return subprocess.run(cmd, input=stdin, capture_output=True, cwd=REPO, env=env, timeout=timeout)


def test_stdin_bytes_in_a_real_process(place: Path, chat_ck: Path) -> None:
    db = place / "chat.sqlite"
    argv = ["chat", chat_ck, "--db", db, "--session", "p", "--max-new-tokens", "2"]
    done = _tinylm(*argv, stdin=b"hello\n\xff\xfe\n")
    err = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert "stdin: not valid UTF-8 (line 2" in err
    assert done.stdout.decode() == "aa\n"
    with ChatStore(db) as store:
        assert store.messages("p") == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "aa"},
        ]


def test_a_fifo_as_chat_db_or_rag_document_never_hangs(place: Path, chat_ck: Path) -> None:
    for args in (
        ["chat", chat_ck, "--db", place / "fifo"],
        ["rag", "index", place / "fifo", "--db", place / "r.db"],
    ):
        done = run_cli(*map(str, args), input="", timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "found a FIFO (named pipe)" in done.stderr


# ----------------------------------------------------------------------------------------------------------
# read-only files and folders: `chattr +i` makes them refuse writes even to root (chmod does not)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """The paths marked immutable (chattr +i) for the block; the test is skipped where that is not possible."""
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["chattr", "-i", *map(str, paths)], capture_output=True, check=False)
        pytest.skip(f"chattr +i is not possible here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def _chat_db(path: Path) -> Path:
    with ChatStore(path) as store:
        store.open_session("s", model="m", system=None)
        store.add_message("s", "user", "kept")
    return path


READ_ONLY_CASES = {  # name -> (what to make immutable, the --db, fragments)
    "read-only file": (lambda p: p / "c.sqlite", lambda p: p / "c.sqlite", ["c.sqlite: read-only"]),
    "file in a read-only folder": (lambda p: p, lambda p: p / "c.sqlite", ["read-only folder"]),
    "new file in a read-only folder": (lambda p: p, lambda p: p / "new.sqlite", ["cannot be written"]),
}


@pytest.mark.parametrize("case", list(READ_ONLY_CASES), ids=list(READ_ONLY_CASES))
def test_chat_on_a_read_only_database(case: str, tmp_path: Path, chat_ck: Path) -> None:
    target, db, fragments = READ_ONLY_CASES[case]
    folder = tmp_path / "ro"
    folder.mkdir()
    _chat_db(folder / "c.sqlite")
    with immutable(target(folder)):
        out = cli("chat", chat_ck, "--db", db(folder), "--session", "s", "--max-new-tokens", "2", stdin="x\n")
        expect(out, 2, *fragments)
        with ChatStore(folder / "c.sqlite", write=False) as store:  # reading it still works
            assert [s.id for s in store.sessions()] == ["s"]
            assert store.messages("s") == [{"role": "user", "content": "kept"}]
    assert not (folder / "new.sqlite").exists()


def test_a_write_refused_mid_session_is_a_clear_error_and_keeps_what_was_stored(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with ChatStore(_chat_db(folder / "c.sqlite")) as store, immutable(folder):  # no journal can be made
        with pytest.raises(StoreError, match=r"c\.sqlite: cannot open the chat database or the journal"):
            store.add_message("s", "assistant", "lost")
        assert not store.conn.in_transaction
        assert store.messages("s") == [{"role": "user", "content": "kept"}]


def test_rag_on_a_read_only_database(rag_db: Path, corpus: Path, tmp_path: Path) -> None:
    copy = tmp_path / "rag.db"
    copy.write_bytes(rag_db.read_bytes())
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "How long do cats sleep?", "source": "cats.md"}) + "\n")
    with immutable(copy):
        expect(cli("rag", "index", corpus, "--db", copy, "--chunk-size", "50"), 2, "rag.db: read-only")
        expect(cli("rag", "eval", questions, "--db", copy, "--k", "1"), 0)  # reading needs no write


# ----------------------------------------------------------------------------------------------------------
# tinylm rag index: what is indexed, into what, and how


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


DOCS: dict[str, tuple[Callable[[Path], Path], list[str]]] = {  # name -> (make the input, fragments)
    "a named FIFO": (lambda p: p / "fifo", ["fifo", "expected a document (a regular file)", "FIFO"]),
    "a link to a FIFO": (
        lambda p: _link(p / "pipe.txt", p / "fifo"),
        ["pipe.txt", "found a FIFO"],
    ),
    "a missing file": (lambda p: p / "none.txt", ["none.txt", "file or folder not found"]),
    "an unsupported suffix": (
        lambda p: _write(p / "a.docx", b"PK\x03\x04"),
        ["a.docx", "unsupported file type"],
    ),
    "an empty file": (lambda p: _write(p / "e.txt", b""), ["e.txt", "no text to index"]),
    "only whitespace": (lambda p: _write(p / "w.md", b" \n\t\n"), ["w.md", "no text to index"]),
    "latin-1 text": (lambda p: _write(p / "l.txt", b"caf\xe9\n"), ["l.txt", "not valid UTF-8", "line 1"]),
    "a PNG named .md": (lambda p: _write(p / "img.md", b"\x89PNG\r\n\x1a\n\x00\x00"), ["img.md", "UTF-8"]),
    "JSON nested 100k deep": (
        lambda p: _write(p / "deep.json", _deep(100_000).encode()),
        ["deep.json", "nested too deeply"],
    ),
    "JSONL nested 100k deep": (
        lambda p: _write(p / "deep.jsonl", (_deep(100_000) + "\n").encode()),
        ["deep.jsonl", "line 1", "nested too deeply"],
    ),
    "invalid JSON": (lambda p: _write(p / "bad.json", b'{"text": '), ["bad.json", "invalid JSON at line 1"]),
    "a JSON number": (lambda p: _write(p / "n.json", b"42"), ["n.json", "expected a list of records"]),
    "a JSONL record without text": (
        lambda p: _write(p / "r.jsonl", b'{"text": "ok"}\n{"body": "x"}\n'),
        ["r.jsonl", "line 2", "missing key 'text'"],
    ),
    "a JSONL text that is a number": (
        lambda p: _write(p / "t.jsonl", b'{"text": 7}\n'),
        ["t.jsonl", "line 1", "key 'text': expected a string"],
    ),
    "garbage named .pdf": (
        lambda p: _write(p / "g.pdf", b"not a pdf at all\n" * 10),
        ["g.pdf", "not a readable PDF"],
    ),
    "a truncated PDF": (
        lambda p: _write(p / "t.pdf", b"%PDF-1.4\n1 0 obj\n<<"),
        ["t.pdf", "not a readable PDF"],
    ),
    "HTML with a broken marked section": (
        lambda p: _write(p / "b.html", b"<html><body><![ if x <p>hi</p></body></html>"),
        ["b.html", "not readable HTML"],
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


@pytest.mark.parametrize("case", list(DOCS), ids=list(DOCS))
def test_rag_index_refuses_the_document(case: str, place: Path) -> None:
    make, fragments = DOCS[case]
    db = place / "rag.db"
    expect(cli("rag", "index", make(place), "--db", db), 2, *fragments)


INDEX_OPTIONS = {  # name -> (arguments, fragments); every one refused before the database is opened
    "chunk-size 0": (
        ["--chunk-size", "0"],
        ["--chunk-size: expected a whole number of tokens >= 1, found 0"],
    ),
    "chunk-size -5": (["--chunk-size", "-5"], ["--chunk-size", "found -5"]),
    "overlap -1": (["--overlap", "-1"], ["--overlap: expected a whole number of tokens >= 0, found -1"]),
    "overlap = chunk size": (
        ["--chunk-size", "10", "--overlap", "10"],
        ["overlap < chunk size (10), found 10"],
    ),
    "overlap > chunk size": (["--chunk-size", "10", "--overlap", "50"], ["--overlap", "found 50"]),
    "a URL that is not http": (
        ["--backend", "qdrant", "--url", "ftp://x"],
        ["--url: expected a Qdrant server"],
    ),
    "a URL with a bad port": (["--backend", "qdrant", "--url", "http://h:99999"], ["--url", "99999"]),
}


@pytest.mark.parametrize("case", list(INDEX_OPTIONS), ids=list(INDEX_OPTIONS))
def test_rag_index_refuses_the_option(case: str, place: Path) -> None:
    args, fragments = INDEX_OPTIONS[case]
    db = place / "rag.db"
    expect(cli("rag", "index", place / "text.txt", "--db", db, *args), 2, *fragments)
    assert not db.exists()


INDEX_DBS = {  # name -> (the --db, fragments)
    "a folder": ("{p}/dir", ["dir", "expected a RAG database (a regular file)", "directory"]),
    "a FIFO": ("{p}/fifo", ["found a FIFO"]),
    "a text file": ("{p}/text.txt", ["text.txt", NOT_SQLITE]),
    "a corrupted file": ("{p}/corrupt.db", ["corrupt.db", NOT_SQLITE]),
    "a foreign SQLite file": ("{p}/foreign.db", ["not a tinylm RAG database", "notes"]),
    "a path below a file": ("{p}/text.txt/rag.db", ["expected a folder", "text.txt"]),
}


@pytest.mark.parametrize("case", list(INDEX_DBS), ids=list(INDEX_DBS))
def test_rag_index_refuses_the_database(case: str, place: Path, corpus: Path) -> None:
    db, fragments = INDEX_DBS[case]
    before = (place / "text.txt").read_bytes()
    expect(cli("rag", "index", corpus / "cats.md", "--db", _argv([db], place)[0]), 2, *fragments)
    assert (place / "text.txt").read_bytes() == before


def test_rag_index_checks_against_the_embedder_and_the_database(
    rag_db: Path, corpus: Path, tmp_path: Path
) -> None:
    expect(
        cli("rag", "index", corpus, "--db", rag_db, "--overlap", "200"), 2, "--overlap", "chunk size (200)"
    )
    newer = tmp_path / "newer.db"
    newer.write_bytes(rag_db.read_bytes())
    with sqlite3.connect(newer) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    raw.close()
    expect(cli("rag", "index", corpus, "--db", newer), 2, "format version 1, found format version 99")
    expect(
        cli("rag", "index", corpus, "--db", tmp_path / "big.db", "--chunk-size", "100000"), 2, "reads at most"
    )
    expect(
        cli("rag", "index", corpus, "--db", rag_db, "--backend", "qdrant"), 2, "this database uses 'sqlite'"
    )


def test_an_unreachable_qdrant_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("qdrant_client")
    args = ["--backend", "qdrant", "--url", "http://127.0.0.1:9"]  # the discard port: nobody listens
    expect(
        cli("rag", "index", corpus / "cats.md", "--db", tmp_path / "q.db", *args),
        2,
        "Qdrant at http://127.0.0.1:9",
    )


def test_a_folder_walk_skips_fifos_and_broken_links_with_a_note(rag_db: Path, corpus: Path) -> None:
    report = index([corpus], rag_db)  # nothing changed: nothing embedded
    assert (report.added, report.skipped) == (0, 2)
    assert any("pipe.txt: skipped, a FIFO (named pipe)" in n for n in report.notes), report.notes
    assert any("gone.md: skipped, a broken link" in n for n in report.notes), report.notes


# ----------------------------------------------------------------------------------------------------------
# tinylm rag ask and rag eval

DB_CASES = {  # name -> (the --db, fragments), for ask and eval alike
    "a missing file": ("{p}/none.db", ["none.db", "no such RAG database", "tinylm rag index"]),
    "a folder": ("{p}/dir", ["expected a RAG database (a regular file)", "directory"]),
    "a FIFO": ("{p}/fifo", ["found a FIFO"]),
    "a text file": ("{p}/text.txt", [NOT_SQLITE]),
    "a corrupted file": ("{p}/corrupt.db", ["corrupt.db", NOT_SQLITE]),
    "an empty file": ("{p}/empty.db", ["an empty file, not a RAG database yet"]),
    "a foreign SQLite file": ("{p}/foreign.db", ["not a tinylm RAG database"]),
}


@pytest.mark.parametrize("case", list(DB_CASES), ids=list(DB_CASES))
def test_rag_ask_and_eval_refuse_the_database(case: str, place: Path, rag_ck: Path) -> None:
    db, fragments = DB_CASES[case]
    db = _argv([db], place)[0]
    questions = place / "q.jsonl"
    questions.write_text(json.dumps({"question": "q?", "source": "cats.md"}) + "\n")
    expect(cli("rag", "ask", "why?", "--db", db, "--model", rag_ck), 2, *fragments)
    expect(cli("rag", "eval", questions, "--db", db), 2, *fragments)


ASK_CASES = {  # name -> (arguments, fragments); the database is the module's real one
    "k 0": (["--k", "0"], ["--k: expected a whole number of chunks >= 1, found 0"]),
    "k -3": (["--k", "-3"], ["--k", "found -3"]),
    "max-new-tokens 0": (["--max-new-tokens", "0"], ["max_new_tokens: expected >= 1, found 0"]),
    "max-new-tokens -1": (["--max-new-tokens", "-1"], ["max_new_tokens", "-1"]),
    "temperature nan": (["--temperature", "nan"], ["temperature: expected a finite number"]),
    "temperature -2": (["--temperature", "-2"], ["temperature: expected >= 0"]),
    "seed -1": (["--seed", "-1"], ["seed"]),
}


@pytest.mark.parametrize("case", list(ASK_CASES), ids=list(ASK_CASES))
def test_rag_ask_refuses(case: str, rag_db: Path, rag_ck: Path) -> None:
    args, fragments = ASK_CASES[case]
    expect(
        cli("rag", "ask", "How long do cats sleep?", "--db", rag_db, "--model", rag_ck, *args), 2, *fragments
    )


def test_rag_ask_on_a_database_without_documents_and_with_a_missing_model(place: Path, rag_db: Path) -> None:
    empty = place / "new.db"
    (place / "e.txt").write_text("")
    expect(cli("rag", "index", place / "e.txt", "--db", empty), 2, "e.txt")  # leaves a database, no documents
    expect(cli("rag", "ask", "why?", "--db", empty, "--model", place), 2, "holds no documents yet")
    expect(cli("rag", "ask", "why?", "--db", rag_db, "--model", place / "no" / "ck"), 2, "ck")


def test_rag_ask_and_eval_answer(rag_db: Path, rag_ck: Path, tmp_path: Path) -> None:
    asked = cli(
        "rag", "ask", "How long do cats sleep?", "--db", rag_db, "--model", rag_ck, "--max-new-tokens", "2"
    )
    expect(asked, 0)
    assert "[1] " in asked.out and "cats.md" in asked.out
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "How long do cats sleep?", "source": "cats.md"}) + "\n")
    expect(cli("rag", "eval", questions, "--db", rag_db, "--k", "1"), 0)


EVAL_CASES: dict[str, tuple[Callable[[Path], Path], list[str], list[str]]] = {
    # name -> (make the questions file, extra arguments, fragments)
    "k 0": (
        lambda p: _questions(p, {"question": "q", "source": "cats.md"}),
        ["--k", "0"],
        ["--k", "found 0"],
    ),
    "k -1": (
        lambda p: _questions(p, {"question": "q", "source": "cats.md"}),
        ["--k", "-1"],
        ["--k", "found -1"],
    ),
    "a missing file": (lambda p: p / "none.jsonl", [], ["none.jsonl", "not found"]),
    "a .txt file": (lambda p: p / "text.txt", [], ["text.txt", "expected a .jsonl file"]),
    "a FIFO named .jsonl": (
        lambda p: _link(p / "pipe.jsonl", p / "fifo"),
        [],
        ["pipe.jsonl", "found a FIFO"],
    ),
    "a folder named .jsonl": (lambda p: _mkdir(p / "d.jsonl"), [], ["d.jsonl", "directory"]),
    "an empty file": (lambda p: _write(p / "e.jsonl", b""), [], ["e.jsonl", "no questions"]),
    "not JSON lines": (
        lambda p: _write(p / "n.jsonl", b"what is this?\n"),
        [],
        ["n.jsonl", "line 1", "invalid JSON"],
    ),
    "a record that is a list": (
        lambda p: _questions(p, ["q", "cats.md"]),
        [],
        ["line 1", "expected an object"],
    ),
    "no question": (lambda p: _questions(p, {"source": "cats.md"}), [], ["line 1", "missing key 'question'"]),
    "no source": (lambda p: _questions(p, {"question": "q"}), [], ["line 1", "missing key 'source'"]),
    "a question that is a number": (
        lambda p: _questions(p, {"question": 3, "source": "cats.md"}),
        [],
        ["key 'question': expected a string"],
    ),
    "a source that is no document": (
        lambda p: _questions(p, {"question": "q", "source": "dogs.md"}),
        [],
        ["line 1", "'dogs.md' names no indexed document"],
    ),
    "not UTF-8": (
        lambda p: _write(p / "l.jsonl", b'{"question": "caf\xe9"}\n'),
        [],
        ["l.jsonl", "not valid UTF-8"],
    ),
    "nested 100k deep": (
        lambda p: _write(p / "deep.jsonl", (_deep(100_000) + "\n").encode()),
        [],
        ["deep.jsonl", "nested too deeply"],
    ),
}


def _questions(place: Path, record: object) -> Path:
    path = place / "questions.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", list(EVAL_CASES), ids=list(EVAL_CASES))
def test_rag_eval_refuses(case: str, place: Path, rag_db: Path) -> None:
    make, args, fragments = EVAL_CASES[case]
    expect(cli("rag", "eval", make(place), "--db", rag_db, *args), 2, *fragments)


def test_a_full_disk_or_a_locked_database_mid_session_keeps_what_was_stored(tmp_path: Path) -> None:
    db = _chat_db(tmp_path / "c.sqlite")
    with ChatStore(db) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full" at this size
        with pytest.raises(
            StoreError, match=r"c\.sqlite: the disk is full; the chat database was left as it"
        ):
            store.add_message("s", "assistant", "x" * 100_000)
        assert not store.conn.in_transaction
        store.conn.execute("PRAGMA busy_timeout = 50")
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(
                StoreError, match=r"c\.sqlite: the chat database is locked by another process"
            ):
                store.add_message("s", "assistant", "later")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.messages("s") == [{"role": "user", "content": "kept"}]


def test_a_full_disk_while_indexing_is_a_clear_error(rag_db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "rag.db"
    copy.write_bytes(rag_db.read_bytes())
    full = r"rag\.db: the disk is full; the RAG database was left as it was"
    with RagDB.open(copy, create=True) as rag:
        before = rag.documents()
        pages = rag.conn.execute("PRAGMA page_count").fetchone()[0]
        rag.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(DataError, match=full), rag.transaction():
            rag.conn.execute("INSERT INTO meta VALUES ('big', ?)", ("x" * 100_000,))
        assert rag.documents() == before and len(before) == 2
