"""Continuous batching: one scheduler thread owns the model and decodes every running request together.

The batch has a fixed number of rows (slots). A new request waits until a row is free, is prefilled alone
into that row between two steps and joins the next step; each row samples with its own `SamplingParams` and
seed, stops on its own stop ids or token budget, and frees its row as soon as it ends or is cancelled.
Results go to each request's sink (by default a queue read by `Job.events()`); `tinylm.serve` hands in a
sink that feeds an asyncio queue.

Where the rows' keys and values live is the `Batcher`'s cache layout, picked by the model's cache
(`CausalLM.static_cache`):

- `SharedCache` (a static cache: tinylm's GPT): one KV cache of `max_batch` rows and `max_len` positions,
  and one forward pass for all running rows per step. The pass writes the new key/value of every row at one
  shared slot, the cursor `at`. Row r holds its tokens contiguously in slots [start_r, at); its key mask
  hides the slots before start_r and its positions count from start_r, so each row decodes as it would
  alone (`generate_batch` on one prompt). When the cursor reaches the end of the cache, or a joining prompt
  is longer than the slots before the cursor, the live slots of all rows move together (one copy per layer)
  to where the longest row needs them. With a prefix cache (`tinylm.generate.prefix`), a joining prompt's
  longest known prefix is copied into its row instead of run, and a row that ends (stop or length) leaves
  the keys and values of its prompt and reply there for later prompts.
- `CachePerRequest` (any other cache: a model run through transformers): each running request has its own
  cache, and the rows take their steps one after another (the same requests, events, sampling and
  cancelling, without the batching speed-up, and without a prefix cache). A failing pass ends only its own
  request.

This module sees token ids only: templates, text stop strings and HTTP belong to `tinylm.serve`. It does
not queue by priority, preempt or split long prompts: requests join in arrival order, each prompt is
prefilled in one pass, and a request runs to its end or its cancellation.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from tinylm.generate.grammar import Grammar, GrammarError, Matcher, constrain
from tinylm.generate.prefix import PrefixCache
from tinylm.generate.sampling import PAD, SamplingParams, choose, process_logits
from tinylm.model import CausalLM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What to generate: prompt ids, a token budget, how to sample, which ids end the reply."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_ids: tuple[int, ...] = ()
    seed: int | None = None  # its own generator: the same tokens whoever else is in the batch
    top_logprobs: int = 0  # how many alternatives to report with each token
    grammar: Grammar | None = None  # the reply follows it (structured output, `tinylm.generate.grammar`)


@dataclass(frozen=True)
class Token:
    """One generated token, its log-probability and, if asked for, the most likely alternatives."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Finished:
    """The last event of a job. reason: a stop id ended it, the budget ran out, it was cancelled, or it failed."""

    reason: Literal["stop", "length", "cancelled", "error"]
    error: str | None = None


Event = Token | Finished
Sink = Callable[[Event], None]


class Job:
    """A submitted request: read its events, or cancel it (its row is freed at the next step boundary)."""

    def __init__(self, request: Request, sink: Sink | None):
        self.request = request
        self._queue: queue.SimpleQueue[Event] | None = None if sink else queue.SimpleQueue()
        self._sink = sink or self._queue.put  # type: ignore[union-attr]
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        self.cancelled = True

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Block for each event until `Finished` (only for jobs submitted without a sink)."""
        assert self._queue is not None, "this job sends its events to the sink it was submitted with"
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if isinstance(event, Finished):
                return

    def emit(self, event: Event) -> None:
        if self.done:
            return
        self.done = isinstance(event, Finished)
        try:
            self._sink(event)
        except Exception:  # a sink whose reader went away (a closed event loop): nobody wants the rest
            log.debug("dropping the events of a job whose sink failed", exc_info=True)
            self.cancelled = True


@dataclass
class _Row:
    """A running job's state in its row of the batch; its prompt and generated ids are in `Batcher._ids[r]`."""

    job: Job
    n_prompt: int
    length: int  # prompt + generated ids so far
    generator: torch.Generator | None
    last: int = 0  # the newest token, fed at the next step
    matcher: Matcher | None = None  # where the reply is in its grammar, if it has one


class CacheLayout(Protocol):
    """Where the running rows' keys and values live, and the forward passes over them."""

    def admit(self, prompt_lengths: list[int]) -> None:
        """Make room for joining prompts of these lengths (a failure ends every running request)."""

    def prefill(self, r: int, prompt: list[int]) -> Tensor:
        """Read `prompt` into row r; the logits after its last token, (1, V)."""

    def passes(self, rows: list[int]) -> list[list[int]]:
        """The running rows grouped by forward pass: a failing pass ends the requests of its group only."""

    def step(self, rows: list[int], tokens: list[int], lengths: list[int]) -> Tensor:
        """Feed each row its newest token (rows holding `lengths` tokens, that one included); logits (n, V)."""

    def free(self, r: int, keep: list[int] | None = None) -> None:
        """Row r's request ended (or its prefill failed); `keep`: the ids whose keys and values the row holds,
        for a prefix cache to keep (a layout without one ignores them)."""


class SharedCache:
    """A model with a static cache (tinylm's GPT): all rows in one KV cache, one forward pass per step (the
    module docstring)."""

    def __init__(
        self,
        model: CausalLM,
        max_batch: int,
        max_len: int,
        device: torch.device,
        prefix: PrefixCache | None = None,
    ):
        self.model, self.max_len, self.device, self.prefix = model, max_len, device, prefix
        self.cache = model.new_cache(max_batch, max_len)
        self.slots = torch.arange(max_len, device=device)
        self.start: dict[int, int] = {}  # running row -> the first slot of its tokens
        self.at = 0  # the cursor: the slot every row writes at the next step

    def admit(self, prompt_lengths: list[int]) -> None:
        need = max([self._longest(), *prompt_lengths])
        if self.at < need or self.at >= self.max_len:
            self._move_cursor(need)

    def prefill(self, r: int, prompt: list[int]) -> Tensor:
        """Run the prompt through row r, into slots [at - n, at); the first p tokens, known to the prefix
        cache, are copied in rather than run."""
        n = len(prompt)
        self.start[r] = start = self.at - n
        p = self.prefix.read_into(prompt, self.cache, row=r, start=start) if self.prefix else 0
        return self.model(
            torch.tensor([prompt[p:]], device=self.device),  # (1, n - p)
            input_pos=self.slots[p:n],
            cache=self._view(slice(r, r + 1), slice(start, self.at)),
            positions=self.slots[None, p:n],
            key_mask=torch.ones(1, n, dtype=torch.bool, device=self.device),
        )[:, -1]  # (1, V)

    def passes(self, rows: list[int]) -> list[list[int]]:
        return [rows] if rows else []

    def step(self, rows: list[int], tokens: list[int], lengths: list[int]) -> Tensor:
        """Every row's newest token at the cursor, in one pass over the rows up to the last running one."""
        if self.at >= self.max_len:
            self._move_cursor(self._longest())
        end = rows[-1] + 1  # rows past the last running one are left out of the pass
        first = min(self.start[r] for r in rows)  # slots before every row's start are left out too
        last, pos, start = [0] * end, [0] * end, [first] * end  # free rows: any token, attending anywhere
        for r, token in zip(rows, tokens):
            last[r], pos[r], start[r] = token, self.at - self.start[r], self.start[r]
        starts = torch.tensor(start, device=self.device)
        logits = self.model(
            torch.tensor(last, device=self.device)[:, None],  # (end, 1)
            input_pos=self.slots[self.at - first : self.at - first + 1],
            cache=self._view(slice(0, end), slice(first, self.at + 1)),
            positions=torch.tensor(pos, device=self.device)[:, None],  # (end, 1)
            key_mask=self.slots[None, first : self.at + 1] >= starts[:, None],  # (end, at + 1 - first)
        )[:, -1]  # (end, V)
        self.at += 1
        return logits[rows]

    def free(self, r: int, keep: list[int] | None = None) -> None:
        start = self.start.pop(r, None)
        if not keep or self.prefix is None or start is None:
            return
        assert start + len(keep) == self.at, f"row {r} holds {self.at - start} tokens, not {len(keep)}"
        try:
            self.prefix.keep(keep, self.cache, row=r, start=start)
        except RuntimeError:  # out of memory: the prefix is lost (later prompts run it again), not the server
            log.exception("could not keep a prefix in the prefix cache")

    def _longest(self) -> int:
        """How many slots the longest running row fills."""
        return max((self.at - s for s in self.start.values()), default=0)

    def _move_cursor(self, to: int) -> None:
        """Move every row's live slots by the same offset so the cursor lands on `to`."""
        assert self._longest() <= to < self.max_len, f"cursor {to} out of range"
        shift, live = to - self.at, self._longest()
        if live and shift:
            src, dst = slice(self.at - live, self.at), slice(to - live, to)
            for k, v in self.cache.layers:  # (B, n_kv_head, max_len, hs) each
                k[:, :, dst] = k[:, :, src].clone()
                v[:, :, dst] = v[:, :, src].clone()
        for r in self.start:
            self.start[r] += shift
        self.at = to

    def _view(self, rows: slice, slots: slice):
        """The cache cut to some rows and slots: views, so the model's writes land in the full cache.

        Slot `slots.start + j` of the cache is slot j of the view; positions are passed explicitly and
        ALiBi reads only distances, so a window decodes as the full cache would, attending over fewer keys.
        """
        view = copy.copy(self.cache)
        view.layers = [(k[rows, :, slots], v[rows, :, slots]) for k, v in self.cache.layers]
        view.batch_size, view.max_len = view.layers[0][0].size(0), view.layers[0][0].size(2)
        return view


class CachePerRequest:
    """A model whose cache is not static (one run through transformers): each running request holds its own
    cache (prompt read once, then one token per step), and the rows take their steps in turn. It keeps no
    prefix cache: transformers' caches are not slots that a prefix can be copied into."""

    def __init__(self, model: CausalLM, max_batch: int, max_len: int, device: torch.device):
        self.model, self.max_len = model, max_len
        self.slots = torch.arange(max_len, device=device)
        self.caches: dict[int, Any] = {}  # running row -> its cache
        self.device = device

    def admit(self, prompt_lengths: list[int]) -> None:
        pass  # every request has a cache of its own

    def prefill(self, r: int, prompt: list[int]) -> Tensor:
        n = len(prompt)
        self.caches[r] = self.model.new_cache(1, self.max_len)
        ids = torch.tensor([prompt], device=self.device)  # (1, n)
        return self.model(ids, input_pos=self.slots[:n], cache=self.caches[r])[:, -1]  # (1, V)

    def passes(self, rows: list[int]) -> list[list[int]]:
        return [[r] for r in rows]

    def step(self, rows: list[int], tokens: list[int], lengths: list[int]) -> Tensor:
        [r], [token], [length] = rows, tokens, lengths
        at = length - 1  # the slot of the newest token
        ids = torch.tensor([[token]], device=self.device)
        return self.model(ids, input_pos=self.slots[at : at + 1], cache=self.caches[r])[:, -1]  # (1, V)

    def free(self, r: int, keep: list[int] | None = None) -> None:
        self.caches.pop(r, None)


class Batcher:
    """The scheduler: `submit` requests from any thread; a background thread decodes them together.

    `prefix_cache_tokens` > 0 keeps the keys and values of up to that many tokens of ended requests for
    prompts that start alike (`tinylm.generate.prefix`; a model with a static cache only)."""

    def __init__(
        self,
        model: CausalLM,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        prefix_cache_tokens: int = 0,
    ):
        if not isinstance(model, CausalLM):
            raise TypeError(
                "continuous batching needs a model with a KV cache (tinylm's GPT or a transformers model), "
                f"found {type(model).__name__}"
            )
        block = model.config.block_size
        assert max_batch >= 1, f"max_batch must be >= 1, got {max_batch}"
        assert max_len is None or 2 <= max_len <= block, f"max_len must be in 2..{block}, got {max_len}"
        assert prefix_cache_tokens >= 0, f"prefix_cache_tokens must be >= 0, got {prefix_cache_tokens}"
        self.model = model.eval()
        self.max_batch = max_batch
        self.max_len = max_len or block
        self.device = next(model.parameters()).device
        self.prefix = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens and model.static_cache else None
        self.layout: CacheLayout = (
            SharedCache(model, max_batch, self.max_len, self.device, self.prefix)
            if model.static_cache
            else CachePerRequest(model, max_batch, self.max_len, self.device)
        )
        self.rows: list[_Row | None] = [None] * max_batch
        self.finished: Counter[str] = Counter()  # jobs ended, by reason
        self.steps = 0
        self._ids = torch.full((max_batch, self.max_len), PAD, device=self.device)  # each row's ids, in order
        self._pending: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the client side ----------------------------------------------------------------------------
    def submit(self, request: Request, sink: Sink | None = None) -> Job:
        """Queue a request; its events go to `sink` (called on the scheduler thread) or to `Job.events()`."""
        n = len(request.prompt)
        if n < 1 or n + request.max_new_tokens > self.max_len or request.max_new_tokens < 1:
            raise ValueError(
                f"a request needs a prompt of >= 1 token and prompt + max_new_tokens <= {self.max_len}; "
                f"found {n} + {request.max_new_tokens}"
            )
        problems = request.params.validate()
        if problems:
            raise ValueError("invalid sampling params: " + "; ".join(problems))
        job = Job(request, sink)
        with self._wake:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            self._pending.append(job)
            self._wake.notify()
        return job

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` on the scheduler thread between two steps (the model is never used by two threads)."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the batcher is closed")
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def stats(self) -> dict[str, Any]:
        """Rows in use, requests waiting for a row, steps taken, jobs ended by reason, and the prefix cache's
        counters (None without one)."""
        with self._wake:
            waiting = len(self._pending)
        running = sum(row is not None for row in self.rows)
        prefix = self.prefix.stats() if self.prefix is not None else None
        return {
            "running": running,
            "waiting": waiting,
            "steps": self.steps,
            "finished": dict(self.finished),
            "prefix_cache": prefix,
        }

    def start(self) -> Batcher:
        assert self._thread is None, "the batcher is already running"
        self._thread = threading.Thread(target=self._run, name="tinylm-batcher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; jobs still waiting or running end as cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        while self._pending:
            self._finish(self._pending.popleft(), "cancelled")
        for r, row in enumerate(self.rows):
            if row is not None:
                self._free(r, "cancelled")
        for _, future in self._calls:
            future.cancel()

    def __enter__(self) -> Batcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the scheduler thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._wake:
                    while not (self._stopping or self._pending or self._calls or self._running()):
                        self._wake.wait()
                    if self._stopping:
                        return
                    calls = list(self._calls)
                    self._calls.clear()
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except Exception as e:
                            future.set_exception(e)
                self._drop_cancelled()
                self._admit(self._take_pending())
                for rows in self.layout.passes(self._running()):
                    self._guarded(rows, None, self._step, rows)

    def _guarded(self, rows: list[int], job: Job | None, fn: Callable[..., None], *args: Any) -> str | None:
        """Run `fn(*args)`, forward passes for `rows` (and a joining `job`); if it fails, end the requests it
        was for with the error, not the server and not the other requests, and return the error."""
        try:
            fn(*args)
            return None
        except Exception as e:
            if isinstance(e, GrammarError):  # the request's schema, not the server: no traceback
                log.warning("a reply stopped: %s", e)
            else:
                log.exception("decoding step failed")
            message = f"{type(e).__name__}: {e}"
            for r in rows:
                if self.rows[r] is not None:
                    self._free(r, "error", message)
                else:
                    self.layout.free(r)  # a prefill that failed before its row was taken
            if job is not None and not job.done:
                self._finish(job, "error", message)
            return message

    def _running(self) -> list[int]:
        return [r for r, row in enumerate(self.rows) if row is not None]

    def _take_pending(self) -> list[Job]:
        free = self.max_batch - len(self._running())
        taken: list[Job] = []
        with self._wake:
            while self._pending and len(taken) < free:
                job = self._pending.popleft()
                if job.cancelled:
                    self._finish(job, "cancelled")
                else:
                    taken.append(job)
        return taken

    def _drop_cancelled(self) -> None:
        for r, row in enumerate(self.rows):
            if row is not None and row.job.cancelled:
                self._free(r, "cancelled")

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill each joining job into a free row (the layout first makes room for them all)."""
        if not jobs:
            return
        failed = self._guarded(
            self._running(), None, self.layout.admit, [len(j.request.prompt) for j in jobs]
        )
        for job in jobs:
            if failed:  # no room was made: the joining requests end with the same error
                self._finish(job, "error", failed)
                continue
            r = self.rows.index(None)
            self._guarded([r], job, self._prefill, r, job)

    def _prefill(self, r: int, job: Job) -> None:
        """Read the job's prompt into row r and sample its first token."""
        prompt = list(job.request.prompt)
        logits = self.layout.prefill(r, prompt)
        n, seed = len(prompt), job.request.seed
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        grammar = job.request.grammar
        matcher = grammar.matcher() if grammar is not None else None
        self._ids[r, :n] = torch.tensor(prompt, device=self.device)
        self.rows[r] = _Row(job, n_prompt=n, length=n, generator=generator, matcher=matcher)
        self._sample([r], logits)

    def _step(self, rows: list[int]) -> None:
        """Feed each of `rows` its newest token and sample the next one."""
        running = [self.rows[r] for r in rows]
        logits = self.layout.step(rows, [row.last for row in running], [row.length for row in running])
        self.steps += 1
        self._sample(rows, logits)

    def _sample(self, rows: list[int], logits: Tensor) -> None:
        """Choose each row's next token: rows sharing params and no seed together, a seeded row alone."""
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(rows):
            row = self.rows[r]
            key = (row.job.request.params, r if row.generator is not None else None)
            groups.setdefault(key, []).append(i)
        for (params, _), members in groups.items():
            rs = [rows[i] for i in members]
            history = self._history(rs, generated_only=False)  # (b, T)
            generated = self._history(rs, generated_only=True)  # (b, G)
            group_logits = constrain(logits[members].float(), [self.rows[r].matcher for r in rs])  # (b, V)
            ids, logprobs = choose(group_logits, history, generated, params, self.rows[rs[0]].generator)
            tops = [()] * len(rs)
            k = max(self.rows[r].job.request.top_logprobs for r in rs)
            if k:
                dist = process_logits(group_logits, history, generated, params).log_softmax(-1)
                values, indices = dist.topk(min(k, dist.size(-1)), dim=-1)  # (b, k)
                tops = [
                    tuple(zip(i_row[: self.rows[r].job.request.top_logprobs], v_row))
                    for r, i_row, v_row in zip(rs, indices.tolist(), values.tolist())
                ]
            for r, t, lp, top in zip(rs, ids.tolist(), logprobs.tolist(), tops):
                self._advance(r, Token(t, lp, top))

    def _history(self, rs: list[int], *, generated_only: bool) -> Tensor:
        """The rows' ids (prompt + generated, or generated only) left-padded with PAD into one (b, T) tensor."""
        spans = [(self.rows[r].n_prompt if generated_only else 0, self.rows[r].length) for r in rs]
        width = max(end - first for first, end in spans)
        out = torch.full((len(rs), width), PAD, device=self.device)
        for i, (r, (first, end)) in enumerate(zip(rs, spans)):
            out[i, width - (end - first) :] = self._ids[r, first:end]
        return out

    def _advance(self, r: int, token: Token) -> None:
        row = self.rows[r]
        if row.matcher is not None:
            row.matcher.advance(token.id)
        self._ids[r, row.length] = token.id
        row.length += 1
        row.last = token.id
        row.job.emit(token)
        if token.id in row.job.request.stop_ids:
            self._free(r, "stop")
        elif row.length - row.n_prompt >= row.job.request.max_new_tokens:
            self._free(r, "length")

    def _free(self, r: int, reason: str, error: str | None = None) -> None:
        row = self.rows[r]
        self.rows[r] = None
        keep = None
        if self.prefix is not None and reason in ("stop", "length"):
            keep = self._ids[r, : row.length - 1].tolist()  # its newest token was never fed
        self.layout.free(r, keep)
        self._finish(row.job, reason, error)

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        self.finished[reason] += 1
        job.emit(Finished(reason, error))  # type: ignore[arg-type]
