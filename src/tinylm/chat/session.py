"""A conversation with one model: history, memory, persistence and an optional retrieval hook; the REPL.

`Chat` holds the system prompt and the user/assistant history. `Chat.send(text)` fits the prompt into the
context window (`tinylm.chat.memory`), commits the user's message, streams the reply from
`LM.stream(messages, chat=True)`, and commits the reply only once it is complete (`tinylm.chat.store`).
A `retrieve(question) -> context` hook, when given, puts retrieved context into the message sent to the
model; the history keeps the question as typed, so old context never crowds out the conversation.

`run_repl` drives a `Chat` from lines of text (a terminal or a pipe) with the commands in `COMMANDS`;
`run_chat` is what `tinylm chat` calls. It gives the model a prefix cache (`LM.prefix_cache`): each turn
re-renders the whole conversation, whose tokens start like the previous turn's prompt and reply, so only
the new message runs. Nothing here samples tokens or renders templates itself.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tinylm.chat.memory import DEFAULT_STRATEGY, check_strategy, fit_messages, lm_counter, prompt_budget
from tinylm.chat.prompts import with_context
from tinylm.chat.store import ChatStore, check_session_id, default_db_path
from tinylm.errors import TinylmError
from tinylm.generate.prefix import DEFAULT_MAX_TOKENS, PrefixCache
from tinylm.rag.retrieval import DEFAULT_RETRIEVAL, retriever

if TYPE_CHECKING:
    from tinylm.api import LM

Retrieve = Callable[[str], str]
COMMANDS = {
    "/exit": "leave the chat (end of input does the same)",
    "/reset": "forget this conversation's messages (the system prompt stays)",
    "/history": "show the conversation so far",
    "/help": "show these commands",
}


class Chat:
    """One conversation with `lm`, stored in `store` under `session_id` when a store is given."""

    def __init__(
        self,
        lm: LM,
        *,
        system: str | None = None,
        strategy: str = DEFAULT_STRATEGY,
        store: ChatStore | None = None,
        session_id: str | None = None,
        model_name: str = "",
        retrieve: Retrieve | None = None,
        **options: Any,
    ):
        self.lm = lm
        self.strategy = check_strategy(strategy)
        self.retrieve = retrieve
        self.options = {k: v for k, v in options.items() if v is not None}
        opts, _ = lm.resolve_options(self.options)  # validates every option now, not at the first message
        self.budget = prompt_budget(lm.config.block_size, opts.max_new_tokens)
        self.count = lm_counter(lm)
        self.store = store
        self.session_id = session_id
        self.system = system
        self.history: list[dict[str, str]] = []
        self.last_prompt: list[dict[str, str]] = []  # what the model saw for the latest reply
        if store is not None:
            if session_id is None:
                raise TinylmError("a chat with a store needs a session id")
            info = store.open_session(session_id, model=model_name, system=system)
            self.system = info.system
            self.history = store.messages(session_id)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The whole conversation: the system prompt (if any), then the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def prompt(self, text: str) -> list[dict[str, str]]:
        """The messages the model would see for `text`, cut to fit (raises `ContextTooLong`)."""
        content = with_context(text, self.retrieve(text)) if self.retrieve else text
        return fit_messages(
            [*self.messages, {"role": "user", "content": content}],
            budget=self.budget,
            count=self.count,
            strategy=self.strategy,
        )

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to `text`. The reply joins the history only when the stream runs to its end."""
        prompt = self.prompt(text)  # too long: raises before anything is stored
        self.last_prompt = prompt
        self._append("user", text)
        pieces = []
        for piece in self.lm.stream(prompt, chat=True, **self.options):
            pieces.append(piece)
            yield piece
        self._append("assistant", "".join(pieces))

    def ask(self, text: str) -> str:
        """The whole reply to `text`."""
        return "".join(self.send(text))

    def reset(self) -> None:
        """Forget the history (in the store too); the system prompt stays."""
        self.history = []
        if self.store is not None:
            self.store.clear_messages(self.session_id)

    def _append(self, role: str, content: str) -> None:
        if self.store is not None:
            self.store.add_message(self.session_id, role, content)  # committed before we go on
        self.history.append({"role": role, "content": content})


def run_repl(chat: Chat, lines: Iterable[str], out: TextIO, err: TextIO) -> None:
    """Answer each line of `lines` until `/exit` or the end of input; commands start with '/'."""
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text.startswith("/"):
            _command(chat, text, out, err)
            continue
        try:
            reply = chat.send(text)
            for piece in reply:
                out.write(piece)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            reply.close()
            out.write("\n")
            err.write("(reply interrupted; it was not saved)\n")
        except TinylmError as e:  # e.g. a message too long for the context window: say so, go on
            err.write(f"error: {e}\n")
        out.flush()


def _command(chat: Chat, text: str, out: TextIO, err: TextIO) -> None:
    if text == "/reset":
        chat.reset()
        err.write("(conversation forgotten)\n")
    elif text == "/history":
        for m in chat.messages:
            out.write(f"{m['role']}: {m['content']}\n")
    elif text == "/help":
        for name, what in COMMANDS.items():
            err.write(f"{name:10} {what}\n")
    else:
        err.write(f"unknown command {text.split()[0]!r}; commands: {', '.join(COMMANDS)}\n")


def input_lines(stream: TextIO | None, prompt: str = "you> ") -> Iterator[str]:
    """Lines from a terminal (with a prompt and line editing) or from a pipe; stops at end of input.

    A pipe's bytes are decoded line by line, so bytes that are not UTF-8 stop the chat with an error naming
    the line (everything said before it is stored already) instead of a decoder's traceback.
    """
    if stream is None:  # started with stdin closed (`0<&-`): nothing to read
        return
    if not stream.isatty():
        raw = getattr(stream, "buffer", None)
        if raw is None:  # already text (a StringIO)
            yield from stream
            return
        for number, line in enumerate(raw, start=1):
            yield _decoded(line, f"line {number}")
        return
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    while True:
        try:
            yield input(prompt)
        except EOFError:
            return
        except UnicodeDecodeError as err:
            raise _not_utf8(err.object, err.start, "the line typed") from None


def _decoded(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(line, err.start, where) from None


def _not_utf8(data: bytes, start: int, where: str) -> TinylmError:
    return TinylmError(
        f"stdin: not valid UTF-8 ({where}, byte {start + 1}: found {data[start : start + 1]!r}); the chat "
        "stopped there, and what was said before it is stored; send UTF-8 text"
    )


def check_prefix_cache_tokens(tokens: int) -> None:
    """Refuse a prefix cache size that is not a whole number >= 0, naming the flag."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise TinylmError(
            f"--prefix-cache-tokens: expected a number of tokens >= 0 (0: off), found {tokens!r}"
        )


def new_session_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def rag_retriever(db: str | Path, retrieval: str = DEFAULT_RETRIEVAL) -> Retrieve:
    """`tinylm.rag.retriever(db)`: a retrieve(question) -> context function, the index checked now;
    `retrieval` is dense, lexical or hybrid (`tinylm.rag.retrieval`)."""
    if not Path(db).exists():
        raise TinylmError(f"{db}: no such RAG index; build one with `tinylm rag index FILES --db {db}`")
    return retriever(db, retrieval=retrieval)


def run_chat(
    model: str,
    *,
    system: str | None = None,
    session: str | None = None,
    db: str | Path | None = None,
    strategy: str = DEFAULT_STRATEGY,
    rag: str | Path | None = None,
    retrieval: str = DEFAULT_RETRIEVAL,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    quantize: str = "none",
    prefix_cache_tokens: int = DEFAULT_MAX_TOKENS,
    **options: Any,
) -> str:
    """Chat with `model` over stdin/stdout, stored in `db` under `session` (new if absent); the session id.
    quantize="int8" loads weight-only int8 weights (`tinylm.quantize`); the keys and values of up to
    `prefix_cache_tokens` tokens of earlier turns are kept for the next (0: none). The streams default to
    sys.stdin, sys.stdout and sys.stderr as they are at the call (a test or the CLI may have replaced them)."""
    from tinylm.api import load

    check_strategy(strategy)
    check_prefix_cache_tokens(prefix_cache_tokens)
    session_id = check_session_id(session) if session else new_session_id()
    retrieve = rag_retriever(rag, retrieval) if rag is not None else None
    lm = load(model, quantize=quantize)
    lm.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens else None
    with ChatStore(db or default_db_path()) as store:
        resumed = store.session(session_id) is not None
        chat = Chat(
            lm,
            system=system,
            strategy=strategy,
            store=store,
            session_id=session_id,
            model_name=str(model),
            retrieve=retrieve,
            **options,
        )
        state = f"resumed, {len(chat.history)} messages" if resumed else "new"
        stderr = stderr or sys.stderr
        stderr.write(f"session {session_id} ({state}) in {store.path}; /help for commands\n")
        stderr.flush()
        run_repl(chat, input_lines(stdin or sys.stdin), stdout or sys.stdout, stderr)
    return session_id
