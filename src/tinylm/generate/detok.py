"""Incremental detokenization: token ids in, text pieces out, cut at stop strings.

The pieces concatenate to exactly the final text: a piece is released only when the decoded text ends
on a whole character (no half of a multi-byte character) and cannot still turn into a stop string.
"""

from __future__ import annotations

from tinylm.tokenizers import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.released = 0  # characters of the final text already handed out
        self.stopped = False  # a stop string was found: the text is complete

    def push(self, token: int) -> str:
        """Add one token; return the text that became final (possibly '')."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return ""
        return self._release(text[: len(text) - self._held_back(text)])

    def finish(self) -> str:
        """The rest of the text, once generation has ended."""
        return self._release(self.text())

    def text(self) -> str:
        """The text so far, cut at the first stop string."""
        text = self.tokenizer.decode(self.ids, skip_special=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return text[:cut]
        return text

    def _held_back(self, text: str) -> int:
        """Characters at the end of `text` that could be the start of a stop string."""
        if self.stopped:
            return 0
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _release(self, upto: str) -> str:
        piece = upto[self.released :]
        self.released = max(self.released, len(upto))
        return piece
