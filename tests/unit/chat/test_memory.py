"""Chat memory: prompts always fit, keep the system prompt and the newest message, and drop as little as
each strategy allows. Property tests count with a char tokenizer through the real chatml template."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm import load
from tinylm.chat.memory import (
    STRATEGIES,
    ContextTooLong,
    check_strategy,
    fit_messages,
    lm_counter,
    prompt_budget,
)
from tinylm.errors import TinylmError
from tinylm.templates import render_chat
from tinylm.tokenizers import train_tokenizer

from .tiny import ALPHABET, chat_checkpoint

TOK = train_tokenizer("char", [ALPHABET])


def count(messages):
    """Prompt ids through the chatml template with a char tokenizer: cheap, and a real layout."""
    return len(TOK.encode(render_chat(messages, TOK, "chatml")[0]))


def msg(role, content):
    return {"role": role, "content": content}


def conversation(n_exchanges, system="sys"):
    out = [msg("system", system)] if system else []
    for i in range(1, n_exchanges + 1):
        out += [msg("user", f"u{i}"), msg("assistant", f"a{i}")]
    return out


# -- reference implementations: the plainest reading of each strategy, tried from keeping most to least --


def _exchanges(history):
    starts = [i for i, m in enumerate(history) if m["role"] == "user" or i == 0]
    return [history[a:b] for a, b in zip(starts, [*starts[1:], len(history)])]


def _candidates(history, strategy):
    """Each history the strategy may keep, most kept first."""
    if strategy == "drop-oldest":
        return [history[k:] for k in range(len(history) + 1)]
    units = _exchanges(history)
    suffixes = [_flat(units[k:]) for k in range(len(units) + 1)]
    if strategy == "drop-exchanges":
        return suffixes
    first = next((k for k, u in enumerate(units) if u[0]["role"] == "user"), len(units))
    pinned, rest = units[: first + 1], units[first + 1 :]
    keep_pin = [_flat(pinned + rest[k:]) for k in range(len(rest) + 1)]
    return keep_pin + [_flat(pinned[k:]) for k in range(1, len(pinned) + 1)]


def _flat(units):
    return [m for unit in units for m in unit]


def reference(messages, budget, strategy, counter=count):
    head = messages[:1] if messages[0]["role"] == "system" and len(messages) > 1 else []
    history, newest = messages[len(head) : -1], messages[-1:]
    for kept in _candidates(history, strategy):
        if counter(head + kept + newest) <= budget:
            return head + kept + newest
    return None


roles = st.sampled_from(["user", "assistant", "system"])
texts = st.text(alphabet="abc xyz", max_size=40)
conversations = st.builds(
    lambda system, history, last: (
        ([msg("system", system)] if system is not None else [])
        + [msg(r, t) for r, t in history]
        + [msg("user", last)]
    ),
    st.one_of(st.none(), texts),
    st.lists(st.tuples(roles, texts), max_size=12),
    texts,
)


@settings(max_examples=300, deadline=None)
@given(conversations, st.integers(1, 500), st.sampled_from(STRATEGIES))
def test_any_conversation_fits_keeps_system_and_newest_and_drops_least(messages, budget, strategy):
    head = messages[:1] if messages[0]["role"] == "system" and len(messages) > 1 else []
    floor = count([*head, messages[-1]])
    if floor > budget:
        with pytest.raises(ContextTooLong, match=f"needs {floor} tokens"):
            fit_messages(messages, budget=budget, count=count, strategy=strategy)
        return
    got = fit_messages(messages, budget=budget, count=count, strategy=strategy)
    assert count(got) <= budget
    assert got[-1] is messages[-1]  # the newest user message
    if head:
        assert got[0] is messages[0]  # the system prompt
    it = iter(messages)
    assert all(any(m is n for n in it) for m in got), "kept messages keep their order"
    assert got == reference(messages, budget, strategy)


def test_each_strategy_on_one_conversation():
    messages = [*conversation(3), msg("user", "u4")]
    everything = count(messages)
    tight = count([messages[0], *messages[3:]])  # system + u2 a2 u3 a3 u4
    fit = {s: fit_messages(messages, budget=tight, count=count, strategy=s) for s in STRATEGIES}
    assert fit["drop-exchanges"] == [messages[0], *messages[3:]]
    assert fit["pin-first"] == [messages[0], messages[1], messages[2], *messages[5:]]  # u1 a1 pinned
    one_less = count([messages[0], *messages[2:]])  # a1 fits alone at this budget
    assert fit_messages(messages, budget=one_less, count=count, strategy="drop-oldest") == [
        messages[0],
        *messages[2:],
    ]
    assert (
        fit_messages(messages, budget=one_less, count=count, strategy="drop-exchanges")
        == fit["drop-exchanges"]
    )
    assert fit_messages(messages, budget=everything, count=count) == messages


def test_pin_first_gives_up_the_pin_before_failing():
    messages = [*conversation(2), msg("user", "u3")]
    floor = count([messages[0], messages[-1]])
    assert fit_messages(messages, budget=floor, count=count, strategy="pin-first") == [
        messages[0],
        messages[-1],
    ]


def test_too_long_is_a_clear_error_and_bad_input_is_refused():
    with pytest.raises(
        ContextTooLong, match=r"your message with the system prompt needs .* more than the 10"
    ):
        fit_messages([msg("system", "s"), msg("user", "x" * 50)], budget=10, count=count)
    with pytest.raises(TinylmError, match="must end with the user's message, found assistant"):
        fit_messages(conversation(1), budget=100, count=count)
    with pytest.raises(TinylmError, match="message 0: expected"):
        fit_messages([{"role": "bot", "content": "hi"}], budget=100, count=count)
    with pytest.raises(TinylmError, match="did you mean 'drop-oldest'"):
        check_strategy("drop-olds")
    with pytest.raises(TinylmError, match="max_new_tokens: expected fewer than the context window"):
        prompt_budget(64, 64)
    assert prompt_budget(64, 16) == 48


def test_counts_are_the_lm_own_prompt_ids_on_a_real_checkpoint(tmp_path):
    lm = load(chat_checkpoint(tmp_path / "ck", block_size=192, kind="bpe"))
    counter = lm_counter(lm)
    messages = [msg("system", "be brief")]
    for i in range(12):
        messages += [msg("user", f"the quick fox {i} jumps"), msg("assistant", f"over the lazy dog {i}")]
    messages.append(msg("user", "and then?"))
    budget = prompt_budget(lm.config.block_size, 16)
    assert counter(messages) > budget  # the test needs a conversation that must be cut
    for strategy in STRATEGIES:
        got = fit_messages(messages, budget=budget, count=counter, strategy=strategy)
        done = lm.complete([got], max_new_tokens=1)[0]
        assert done.prompt_tokens == counter(got) <= budget  # what the model was fed, measured by the LM
        assert got[0] == messages[0] and got[-1] == messages[-1]
        assert got == reference(messages, budget, strategy, counter)  # nothing more could have been kept
        assert len(got) < len(messages)
