"""The replies of one request: batcher events in, text pieces cut at stop strings out.

`Reply` turns one job's token events into text with `TextStream` (the cutting `LM.stream` uses), counts the
tokens the reply used and collects logprobs. `run_replies` submits a request's jobs to the batcher, merges
their events on the event loop, and cancels every job when the caller stops reading (a stop string was
found, or the client went away), so the batcher frees those rows at its next step.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from tinylm.generate.continuous import Batcher, Event, Finished, Request
from tinylm.generate.detok import TextStream
from tinylm.serve.protocol import APIError, TokenLogprob
from tinylm.tokenizers import Tokenizer


@dataclass(frozen=True)
class Update:
    """New text of one reply (possibly empty on the last update), its tokens' logprobs, and its end."""

    index: int
    text: str
    offset: int  # characters of the reply before `text`
    logprobs: list[TokenLogprob]
    finish_reason: str | None


class Reply:
    """One choice: text so far, tokens used, logprobs, and why it ended."""

    def __init__(
        self,
        index: int,
        tokenizer: Tokenizer,
        *,
        stop: Sequence[str],
        stop_ids: Sequence[int],
        logprobs: bool,
    ):
        self.index = index
        self.tokenizer = tokenizer
        self.stream = TextStream(tokenizer, list(stop))
        self.stop_ids = set(stop_ids)
        self.want_logprobs = logprobs
        self.text = ""
        self.tokens = 0  # generated tokens this reply used, a final stop id included
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self._unsent: list[TokenLogprob] = []  # logprobs of tokens whose text is still held back

    def feed(self, event: Event) -> Update | None:
        """Take the job's next event; the update to send, if there is new text or the reply ended."""
        if isinstance(event, Finished):
            if event.reason == "error" and (event.error or "").startswith("GrammarError"):  # the schema's
                reason = event.error.removeprefix("GrammarError: ")  # own fault
                raise APIError(400, f"response_format: {reason}", param="response_format")
            if event.reason == "error":
                raise APIError(500, f"generation failed: {event.error}", type="server_error")
            if event.reason == "cancelled":
                raise APIError(503, "the server is shutting down", type="server_error")
            return self._update(self.stream.finish(), event.reason)
        self.tokens += 1
        if event.id in self.stop_ids:
            return self._update(self.stream.finish(), "stop")
        if self.want_logprobs:
            names = self.tokenizer.token_strings([event.id, *(i for i, _ in event.top)])
            top = tuple((name, lp) for name, (_, lp) in zip(names[1:], event.top))
            self._unsent.append(TokenLogprob(names[0], event.logprob, top))
        piece = self.stream.push(event.id)
        if self.stream.stopped:
            return self._update(piece, "stop")
        return self._update(piece, None) if piece else None

    def _update(self, piece: str, finish_reason: str | None) -> Update:
        update = Update(self.index, piece, len(self.text), self._unsent, finish_reason)
        self.text += piece
        self.logprobs += self._unsent
        self._unsent = []
        self.finish_reason = finish_reason
        return update


async def run_replies(
    batcher: Batcher, requests: list[Request], replies: list[Reply]
) -> AsyncIterator[Update]:
    """Submit one job per reply and yield their updates as they come, until every reply has ended."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    jobs = []
    try:
        for i, request in enumerate(requests):
            jobs.append(batcher.submit(request, sink=functools.partial(_deliver, loop, events, i)))
        running = len(jobs)
        while running:
            i, event = await events.get()
            reply = replies[i]
            if reply.finish_reason is not None:  # tokens decoded before the job saw its cancellation
                continue
            update = reply.feed(event)
            if reply.finish_reason is not None:
                jobs[i].cancel()  # a stop string: the batcher does not know text, so tell it
                running -= 1
            if update is not None:
                yield update
    finally:
        for job in jobs:
            job.cancel()


def _deliver(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int, event: Event) -> None:
    """The batcher's sink for one job: hand the event to the event loop's thread."""
    loop.call_soon_threadsafe(events.put_nowait, (index, event))
