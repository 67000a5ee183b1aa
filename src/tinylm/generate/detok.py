"""Incremental detokenization: token ids in, text pieces out, cut at stop strings; and `reply_text`, the
same cutting for a reply generated whole.

The pieces concatenate to exactly the final text: a piece is released only when the decoded text ends
on a whole character (no half of a multi-byte character) and cannot still turn into a stop string.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from tinylm.tokenizers import Tokenizer


class TextStream:
    """Token ids in, final text pieces out; each push decodes only the last few tokens, not the whole text.

    As vLLM's incremental detokenizer: ids[prefix:read] were decoded already; a push decodes
    ids[prefix:] and keeps what goes beyond the text of ids[prefix:read], so the window of context stays
    a few tokens long and a push costs the same at token 10 and at token 10,000.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read]: decoded context; ids[read:]: not yet text
        self.decoded = ""  # the text of ids[:read]
        self.released = 0  # characters of the final text already handed out
        self.stopped = False  # a stop string was found: the text is complete

    def push(self, token: int) -> str:
        """Add one token; return the text that became final (possibly '')."""
        if self.stopped:
            return ""
        self.ids.append(token)
        if not self._advance():  # an incomplete multi-byte character: wait for the rest
            return ""
        text = self.text()
        return self._release(text[: len(text) - self._held_back(text)])

    def finish(self) -> str:
        """The rest of the text, once generation has ended."""
        if not self.stopped and self.read < len(self.ids):
            self._advance(final=True)
        return self._release(self.text())

    def text(self) -> str:
        """The text so far, cut at the first stop string."""
        if not self.stop:
            return self.decoded
        cut = min((i for i in (self.decoded.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self.decoded[:cut]
        return self.decoded

    def _advance(self, final: bool = False) -> bool:
        """Decode the new tokens into `decoded`; False while they end inside a multi-byte character
        (unless `final`: generation is over and what is there is the text)."""
        seen = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special=True)
        window = self.tokenizer.decode(self.ids[self.prefix :], skip_special=True)
        if window.endswith("\ufffd") and not final:
            return False
        self.decoded += window[len(seen) :]
        self.prefix, self.read = self.read, len(self.ids)
        return True

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that could be the start of a stop string."""
        if self.stopped:
            return 0
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _release(self, upto: str) -> str:
        piece = upto[self.released :]
        self.released = max(self.released, len(upto))
        return piece


def reply_text(
    tokenizer: Tokenizer, tokens: Iterable[int], *, stop: list[str], stop_ids: Collection[int]
) -> tuple[str, bool]:
    """The text of a finished reply: `tokens` decoded up to the first of `stop_ids`, cut at the first stop
    string; and whether a stop string cut it. The text is what a `TextStream` streams for the same tokens."""
    stream = TextStream(tokenizer, stop)
    for token in tokens:
        if token in stop_ids:
            break
        stream.push(token)
    stream.finish()
    return stream.text(), stream.stopped
