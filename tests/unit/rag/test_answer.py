"""Tests for tinylm.rag.answer and the retrieval helpers: prompt composition with numbered sources and
citation instructions, and `ask` with a tiny random checkpoint (answer quality is not the point)."""

from __future__ import annotations

import pytest

from tests.unit.rag.corpus import tiny_checkpoint, write_corpus
from tinylm import load
from tinylm.errors import DataError, TinylmError
from tinylm.rag import ask, compose_prompt, context_for, index, retrieve, retriever
from tinylm.rag.retrieval import INSTRUCTIONS, Hit, format_sources


def _hits() -> list[Hit]:
    return [
        Hit(1, 0.9, "/d/cats.md", "", 0, 0, 12, "Cats sleep a lot.", 7),
        Hit(2, 0.5, "/d/guide.pdf", "page 2", 3, 0, 9, "Pump tyres.", 9),
    ]


def test_plain_prompt_lists_numbered_sources_then_the_question():
    prompt = compose_prompt("How long do cats sleep?", _hits(), chat=False)
    assert prompt == (
        f"{INSTRUCTIONS}\n\nSources:\n"
        "[1] /d/cats.md (chunk 0)\nCats sleep a lot.\n\n"
        "[2] /d/guide.pdf (page 2, chunk 3)\nPump tyres.\n\n"
        "Question: How long do cats sleep?\nAnswer:"
    )
    assert "as [1] or [2]" in INSTRUCTIONS


def test_chat_prompt_puts_sources_in_the_system_message():
    messages = compose_prompt("How long do cats sleep?", _hits(), chat=True)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == f"{INSTRUCTIONS}\n\nSources:\n{format_sources(_hits())}"
    assert messages[1]["content"] == "How long do cats sleep?"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "rag.db"
    index([write_corpus(tmp_path / "docs")], path)
    return path


def test_ask_generates_from_the_composed_prompt(db, tmp_path):
    model = tiny_checkpoint(tmp_path / "tiny")
    answer = ask(db, "Which volcano is on Sicily?", model, k=2, max_new_tokens=6)
    assert [h.rank for h in answer.sources] == [1, 2]
    assert answer.sources == retrieve(db, "Which volcano is on Sicily?", 2)
    assert answer.sources[0].path.endswith("volcano.html")
    assert isinstance(answer.prompt, str)  # no chat template: one plain prompt
    assert "[1] " in answer.prompt and "[2] " in answer.prompt and "Mount Etna" in answer.prompt
    assert answer.prompt.endswith("Question: Which volcano is on Sicily?\nAnswer:")
    lm = load(model)
    assert answer.text and answer.text == lm.generate(answer.prompt, raw=True, max_new_tokens=6).strip()


def test_ask_uses_the_chat_template_when_the_model_has_one(db, tmp_path, monkeypatch):
    lm = load(tiny_checkpoint(tmp_path / "chat", chat_template="chatml"))
    calls = []
    generate = lm.generate
    monkeypatch.setattr(
        lm, "generate", lambda prompt, **kw: calls.append((prompt, kw)) or generate(prompt, **kw)
    )
    answer = ask(db, "Who created Python?", lm, k=1, max_new_tokens=5)
    assert isinstance(answer.prompt, list) and answer.prompt[1] == {
        "role": "user",
        "content": "Who created Python?",
    }
    assert "[1] " in answer.prompt[0]["content"] and "Guido van Rossum" in answer.prompt[0]["content"]
    assert calls == [
        (answer.prompt, {"raw": True, "max_new_tokens": 5})
    ]  # messages: the chat template applies
    assert answer.text == generate(answer.prompt, max_new_tokens=5).strip()


def test_context_for_and_the_chat_hook_give_numbered_sources(db):
    context = context_for(db, "How do plants make sugar?", k=2)
    assert context == format_sources(retrieve(db, "How do plants make sugar?", 2))
    assert context.startswith("[1] ") and "\n\n[2] " in context and "Photosynthesis" in context
    assert retriever(db, k=2)("How do plants make sugar?") == context


def test_retrieval_errors(db, tmp_path):
    with pytest.raises(TinylmError, match="k: expected a whole number of chunks >= 1, found 0"):
        retrieve(db, "cats", 0)
    with pytest.raises(DataError, match=r"missing\.db: no such RAG database"):
        retrieve(tmp_path / "missing.db", "cats")
