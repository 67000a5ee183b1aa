"""The SQLite chat store on a real file: schema, resume, listing, transactions, bad files."""

import sqlite3

import pytest

from tinylm.chat.store import SCHEMA_VERSION, ChatStore, StoreError, default_db_path


def test_messages_survive_reopening_and_sessions_are_listed(tmp_path):
    path = tmp_path / "sub" / "chat.sqlite"
    with ChatStore(path) as store:
        store.open_session("s1", model="m", system="be brief")
        store.add_message("s1", "user", "hello")
        store.add_message("s1", "assistant", "hi there")
        store.open_session("s2", model="m2", system=None)
    with ChatStore(path) as store:
        assert store.messages("s1") == [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi there"},
        ]
        resumed = store.open_session("s1", model="m3", system=None)  # no --system: the stored one stays
        assert (resumed.system, resumed.model, resumed.messages) == ("be brief", "m3", 2)
        assert store.open_session("s1", model="m3", system="be kind").system == "be kind"
        listed = {s.id: s for s in store.sessions()}
        assert set(listed) == {"s1", "s2"}
        assert (listed["s1"].messages, listed["s1"].first_question) == (2, "hello")
        assert (listed["s2"].messages, listed["s2"].first_question) == (0, None)
        store.clear_messages("s1")
        assert store.messages("s1") == [] and store.session("s1").system == "be kind"
        assert store.session("nope") is None
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with ChatStore(tmp_path / "c.sqlite") as store:
        store.open_session("s", model="m", system=None)
        with pytest.raises(sqlite3.IntegrityError):
            store.add_message("s", "tool", "not a chat role")  # the CHECK constraint refuses it
        with pytest.raises(sqlite3.IntegrityError):
            store.add_message("missing", "user", "no such session")  # the foreign key refuses it
        assert store.messages("s") == [] and not store.conn.in_transaction
        store.add_message("s", "user", "still writable")
        assert store.messages("s") == [{"role": "user", "content": "still writable"}]


def test_bad_files_and_ids_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not a database, just text " * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite: not a SQLite database \(corrupted"):
        ChatStore(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE notes (x)")
    with pytest.raises(StoreError, match=r"other\.sqlite: not a tinylm chat database .*tables: notes"):
        ChatStore(other)
    newer = tmp_path / "newer.sqlite"
    ChatStore(newer).close()
    with sqlite3.connect(newer) as raw:
        raw.execute("INSERT INTO schema_version VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99, this tinylm reads version 1"):
        ChatStore(newer)
    with ChatStore(tmp_path / "ok.sqlite") as store, pytest.raises(StoreError, match="session id: expected"):
        store.open_session("has space", model="m", system=None)


def test_default_path_follows_tinylm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / "chat.sqlite"
