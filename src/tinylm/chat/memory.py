"""Chat memory: cut a conversation down so its prompt fits the model's context window.

A prompt for the next reply is the system prompt, some of the history, and the newest user message, laid
out by the model's chat template. Its length is measured by rendering it through the very template and
tokenizer `LM.stream` uses and counting the ids, so a prompt that "fits" here fits there. The budget is the
context window minus the tokens reserved for the reply (`max_new_tokens`).

Three strategies decide what goes first when the conversation is too long (the course notes' chatbot
memory exercise, plus pinning):

- ``drop-oldest``: drop the oldest history messages one at a time (a reply may lose its question).
- ``drop-exchanges``: drop the oldest whole exchanges (a user message with the replies that follow it).
- ``pin-first``: keep the first exchange (it often sets the task), drop the exchanges after it, oldest
  first; only when that is not enough does the first exchange go too.

Every strategy keeps the system prompt (a leading ``system`` message) and the newest user message; when
those two alone do not fit, `fit_messages` raises `ContextTooLong`, so the caller can tell the user and let
them send something shorter (the notes' "retry when too long").

This module counts and cuts; it does not generate, store conversations or know about the terminal.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tinylm.errors import TinylmError
from tinylm.templates import check_messages

if TYPE_CHECKING:
    from tinylm.api import LM

STRATEGIES = ("drop-oldest", "drop-exchanges", "pin-first")
DEFAULT_STRATEGY = "drop-exchanges"

Messages = list[dict[str, str]]
Counter = Callable[[Messages], int]


class ContextTooLong(TinylmError):
    """Even the system prompt and the newest user message do not fit the context window."""


def check_strategy(strategy: str) -> str:
    """`strategy` if it is known; otherwise a TinylmError naming the closest known one."""
    if strategy not in STRATEGIES:
        close = difflib.get_close_matches(strategy, STRATEGIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TinylmError(
            f"unknown memory strategy {strategy!r}{hint}; expected one of {', '.join(STRATEGIES)}"
        )
    return strategy


def lm_counter(lm: LM) -> Counter:
    """Count the prompt ids `lm` would feed its model for a message list.

    It calls the LM's own layout and encoding (the code `LM.stream(messages, chat=True)` runs), so the
    count cannot drift from what is generated from: template, special tokens, default system prompt of an
    HF template, and all.
    """

    def count(messages: Messages) -> int:
        text, _stops = lm.render_prompt(messages, chat=True, raw=False)
        return len(lm.encode(text))

    return count


def prompt_budget(context_window: int, max_new_tokens: int) -> int:
    """Tokens the prompt may use: the context window less the reply's reserved tokens."""
    budget = context_window - max_new_tokens
    if budget < 1:
        raise TinylmError(
            f"max_new_tokens: expected fewer than the context window ({context_window} tokens) so a prompt "
            f"fits beside the reply, found {max_new_tokens}"
        )
    return budget


def fit_messages(
    messages: Sequence[dict[str, str]], *, budget: int, count: Counter, strategy: str = DEFAULT_STRATEGY
) -> Messages:
    """The messages to send: `messages` with history dropped by `strategy` until `count` <= `budget`.

    `messages` is [system?] + history + [newest user message]. The result keeps their order, the system
    prompt and the newest user message, and drops as little as the strategy allows (a binary search over
    how many units to drop, so a long chat costs O(log n) renders, not O(n)).
    """
    messages = list(messages)
    check_messages(messages)
    check_strategy(strategy)
    if not messages or messages[-1]["role"] != "user":
        last = messages[-1]["role"] if messages else "nothing"
        raise TinylmError(f"a prompt must end with the user's message, found {last}")
    head = messages[:1] if messages[0]["role"] == "system" and len(messages) > 1 else []
    history = messages[len(head) : -1]
    newest = messages[-1:]
    units = _units(history, strategy)
    order = _drop_order(units, history, strategy)

    def keep(dropped: int) -> Messages:
        gone = {i for unit in order[:dropped] for i in unit}
        return head + [m for i, m in enumerate(history) if i not in gone] + newest

    floor = count(keep(len(order)))
    if floor > budget:
        what = "your message with the system prompt" if head else "your message"
        raise ContextTooLong(
            f"{what} needs {floor} tokens, more than the {budget} the context window leaves beside the "
            f"reply; send something shorter, or lower max_new_tokens"
        )
    lo, hi = 0, len(order)  # invariant: keep(hi) fits
    while lo < hi:
        mid = (lo + hi) // 2
        if count(keep(mid)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return keep(hi)


def _units(history: Messages, strategy: str) -> list[list[int]]:
    """History indices grouped into what is dropped together: single messages, or exchanges."""
    if strategy == "drop-oldest":
        return [[i] for i in range(len(history))]
    units: list[list[int]] = []
    for i, m in enumerate(history):
        if m["role"] == "user" or not units:
            units.append([])
        units[-1].append(i)
    return units


def _drop_order(units: list[list[int]], history: Messages, strategy: str) -> list[list[int]]:
    """Units in the order they go; pin-first moves everything up to the first exchange to the end."""
    if strategy != "pin-first":
        return units
    first = next((k for k, u in enumerate(units) if history[u[0]]["role"] == "user"), len(units))
    return units[first + 1 :] + units[: first + 1]
