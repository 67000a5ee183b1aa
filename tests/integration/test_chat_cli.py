"""`tinylm chat` end to end on tiny checkpoints: piped questions, resume, listing, errors, and a process
killed with SIGKILL mid-reply that leaves the database whole and without a partial reply."""

import os
import select
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, run_cli
from tests.unit.chat.tiny import chat_checkpoint
from tinylm.chat.store import ChatStore
from tinylm.cli import main


def test_pipe_two_questions_then_resume_with_history_and_list(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)  # piped output is laid out wide: one table row per session
    ck = str(chat_checkpoint(tmp_path / "ck", constant="a"))  # greedy replies: 'a' * max_new_tokens
    db = str(tmp_path / "chat.sqlite")
    first = run_cli(
        "chat", ck, "--db", db, "--session", "s1", "--system", "be brief", "--max-new-tokens", "5",
        input="first question\nsecond question\n",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout == "aaaaa\naaaaa\n"
    assert "session s1 (new)" in first.stderr

    again = run_cli(
        "chat", ck, "--db", db, "--session", "s1", "--max-new-tokens", "3",
        input="/history\n" + "x" * 400 + "\nthird\n/exit\nnever answered\n",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "session s1 (resumed, 4 messages)" in again.stderr
    assert "error: your message with the system prompt needs" in again.stderr  # told, and it went on
    assert again.stdout == (
        "system: be brief\nuser: first question\nassistant: aaaaa\n"
        "user: second question\nassistant: aaaaa\n"
        "aaa\n"
    )

    assert main(["chat", "--list", "--db", db]) == 0  # in-process: the listing needs no model
    listed = capsys.readouterr().out
    row = next(line for line in listed.splitlines() if " s1 " in line)
    assert " 6 " in row and "first question" in row and ck in row


def test_sigkill_mid_reply_keeps_earlier_messages_and_no_partial_reply(tmp_path):
    ck = chat_checkpoint(tmp_path / "ck", block_size=4096, constant="a")
    db = tmp_path / "chat.sqlite"
    with ChatStore(db) as store:
        store.open_session("k", model=str(ck), system=None)
        store.add_message("k", "user", "earlier question")
        store.add_message("k", "assistant", "earlier reply")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    args = ["chat", str(ck), "--db", str(db), "--session", "k", "--max-new-tokens", "4000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )
    try:
        proc.stdin.write(b"second question\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 240
        ready = []
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        assert ready, "the chat printed no reply"
        seen = os.read(proc.stdout.fileno(), 64)
        assert seen and set(seen.decode()) == {"a"}  # the reply has begun (4000 tokens would take seconds)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
        proc.stdout.close()
    with ChatStore(db) as store:
        assert store.messages("k") == [
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "earlier reply"},
            {"role": "user", "content": "second question"},  # committed when sent
        ]  # and no partial reply


def test_bad_input_is_a_clear_error_without_traceback(tmp_path, capsys):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database " * 100)
    assert main(["chat", "--list", "--db", str(junk)]) == 2
    err = capsys.readouterr().err
    assert f"error: {junk}: not a SQLite database (corrupted" in err and "Traceback" not in err
    assert main(["chat", "--db", str(tmp_path / "c.sqlite")]) == 2
    assert "expected a MODEL" in capsys.readouterr().err
    assert main(["chat", str(tmp_path / "missing" / "ck"), "--session", "bad id"]) == 2
    assert "session id: expected" in capsys.readouterr().err


def test_listing_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    assert main(["chat", "--list"]) == 0  # the default database, not made yet
    assert "no chat sessions yet" in capsys.readouterr().out
    assert main(["chat", "--list", "--db", str(tmp_path / "typo" / "chat.sqlite")]) == 2
    assert "no such chat database" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_quantize_reaches_the_model_load(tmp_path, monkeypatch):
    import tinylm.api
    from tinylm.errors import TinylmError

    asked = []

    def fake_load(model, **kw):
        asked.append((model, kw))
        raise TinylmError("stopped after the load call")

    monkeypatch.setattr(tinylm.api, "load", fake_load)
    assert main(["chat", "some-model", "--db", str(tmp_path / "c.sqlite"), "--quantize", "int8"]) == 2
    assert asked == [("some-model", {"quantize": "int8"})]
