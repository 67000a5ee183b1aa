"""`Chat` over tiny checkpoints: streaming, memory, what is stored when, retrieval, and the REPL."""

import io

import pytest

from tinylm import load
from tinylm.chat.memory import ContextTooLong
from tinylm.chat.session import Chat, rag_retriever, run_chat, run_repl
from tinylm.chat.store import ChatStore
from tinylm.errors import TinylmError

from .tiny import chat_checkpoint


@pytest.fixture(scope="module")
def constant_lm(tmp_path_factory):
    """Greedy replies are 'a' * max_new_tokens; a 256-token window (chatml costs ~28 per message)."""
    return load(chat_checkpoint(tmp_path_factory.mktemp("ck") / "const", block_size=256, constant="a"))


def test_streamed_reply_is_the_lm_reply_to_the_fitted_prompt(tmp_path):
    lm = load(chat_checkpoint(tmp_path / "bpe", kind="bpe"))
    chat = Chat(lm, system="be brief", max_new_tokens=12, temperature=1.0, seed=3)
    replies = []
    for question in ("the quick fox", "jumps over"):
        pieces = list(chat.send(question))
        assert chat.last_prompt == [*chat.messages[:-1]]  # everything fits: the whole conversation went
        expected = lm.generate(chat.last_prompt, chat=True, max_new_tokens=12, temperature=1.0, seed=3)
        assert "".join(pieces) == expected
        replies.append(expected)
    assert chat.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the quick fox"},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "jumps over"},
        {"role": "assistant", "content": replies[1]},
    ]


def test_long_chat_never_exceeds_the_window_and_resumes_from_the_store(constant_lm, tmp_path):
    db = tmp_path / "chat.sqlite"
    with ChatStore(db) as store:
        chat = Chat(
            constant_lm, system="sys", store=store, session_id="s", strategy="pin-first", max_new_tokens=8
        )
        assert chat.budget == 256 - 8
        for i in range(4):
            assert chat.ask(f"q{i}") == "a" * 8
            sent = constant_lm.complete([chat.last_prompt], max_new_tokens=1)[0].prompt_tokens
            assert sent == chat.count(chat.last_prompt) <= chat.budget
        assert len(chat.last_prompt) < len(chat.messages) - 1  # the window forced cuts
        assert chat.last_prompt[:3] == chat.messages[:3]  # pin-first kept the first exchange
        assert chat.last_prompt[-1] == {"role": "user", "content": "q3"}
    with ChatStore(db) as store:
        again = Chat(constant_lm, store=store, session_id="s", max_new_tokens=8)
        assert again.messages == chat.messages and len(again.history) == 8


def test_a_reply_is_stored_only_when_complete(constant_lm, tmp_path):
    with ChatStore(tmp_path / "chat.sqlite") as store:
        chat = Chat(constant_lm, store=store, session_id="s", max_new_tokens=20)
        reply = chat.send("first")
        assert next(reply) == "a"
        reply.close()  # the reader stopped mid-reply (Ctrl-C, a dropped client)
        assert store.messages("s") == [{"role": "user", "content": "first"}]
        with pytest.raises(ContextTooLong, match="your message needs"):
            chat.ask("x" * 300)
        assert store.messages("s") == chat.history == [{"role": "user", "content": "first"}]
        chat.reset()
        assert store.messages("s") == [] and chat.history == []


def test_retrieved_context_is_sent_but_not_kept(constant_lm):
    asked = []

    def retrieve(question):
        asked.append(question)
        return "The sky is green."

    chat = Chat(constant_lm, retrieve=retrieve, max_new_tokens=4)
    chat.ask("what color?")
    assert asked == ["what color?"]
    assert "Context:\nThe sky is green." in chat.last_prompt[-1]["content"]
    assert chat.history[0] == {"role": "user", "content": "what color?"}


def test_options_are_checked_when_the_chat_starts(constant_lm):
    with pytest.raises(TinylmError, match="temperature"):
        Chat(constant_lm, temperature=-1.0)
    with pytest.raises(TinylmError, match="max_new_tokens: expected fewer than the context window"):
        Chat(constant_lm, max_new_tokens=256)
    with pytest.raises(TinylmError, match="unknown memory strategy"):
        Chat(constant_lm, strategy="forget-all")


def test_repl_commands_and_errors_keep_the_chat_going(constant_lm):
    chat = Chat(constant_lm, system="sys", max_new_tokens=3)
    lines = [
        "hello\n",
        "\n",
        "x" * 300 + "\n",
        "/history\n",
        "/bogus\n",
        "/reset\n",
        "/history\n",
        "/exit\n",
        "never\n",
    ]
    out, err = io.StringIO(), io.StringIO()
    run_repl(chat, lines, out, err)
    assert out.getvalue() == "aaa\nsystem: sys\nuser: hello\nassistant: aaa\nsystem: sys\n"
    assert "error: your message with the system prompt needs" in err.getvalue()
    assert "unknown command '/bogus'" in err.getvalue() and "/history" in err.getvalue()
    assert chat.history == []


def test_rag_hook_checks_the_index_before_the_first_question(tmp_path):
    db = tmp_path / "index.db"
    with pytest.raises(TinylmError, match=r"index\.db: no such RAG index; build one with `tinylm rag index"):
        rag_retriever(db)
    db.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(TinylmError, match=r"index\.db"):
        rag_retriever(db)


def test_run_chat_reuses_earlier_turns_through_a_prefix_cache_and_replies_the_same(tmp_path, monkeypatch):
    import tinylm.api

    ck = chat_checkpoint(tmp_path / "char")
    loaded = []
    monkeypatch.setattr(tinylm.api, "load", lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1])
    outputs = []
    for tokens in (512, 0):
        out = io.StringIO()
        run_chat(
            str(ck), system="be brief", db=tmp_path / f"{tokens}.sqlite", prefix_cache_tokens=tokens,
            stdin=io.StringIO("the quick fox\njumps over\nthe lazy dog\n"), stdout=out, stderr=io.StringIO(),
            max_new_tokens=6, temperature=1.0, seed=3,
        )  # fmt: skip
        outputs.append(out.getvalue())
    cached, plain = loaded
    assert outputs[0] == outputs[1] and outputs[0].strip()
    assert cached.prefix_cache.max_tokens == 512 and plain.prefix_cache is None
    assert cached.prefix_cache.hits == 2 and cached.prefix_cache.misses == 1
    assert cached.prefix_cache.tokens_reused > 20  # the system prompt and the first exchange, at least
