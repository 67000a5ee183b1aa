"""An exact prefix cache: the keys and values of token sequences already run, kept for later prompts.

A prompt that starts like one run before (a system prompt shared by requests, a chat's earlier turns) needs
no pass over that start again: its keys and values are copied into the new cache and only the rest runs.
The key/value of position i depends only on tokens 0..i, so an entry serves any prefix of itself, and
greedy replies are the same with and without the cache.

Entries are (token ids, per layer K and V of shape (n_kv_head, L, head_size) for positions 0..L-1), copied
off the cache they came from, on its device and in its dtype. The cache holds at most `max_tokens` tokens
over all entries and forgets the least recently used first; room is made before anything is copied. An
entry that is a prefix of a new one is replaced by it, and ids already held as a prefix of an entry are not
stored twice. It does not share storage between entries that only begin alike (each holds its own copy),
and it knows nothing of rows, slots or batches beyond the `KVCache` row and first slot it is handed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from tinylm.model import KVCache

DEFAULT_MAX_TOKENS = 4096  # what `tinylm chat` and `tinylm serve` keep unless told otherwise
Layers = list[tuple[Tensor, Tensor]]  # per layer (k, v), each (n_kv_head, L, head_size)


@dataclass
class Entry:
    ids: tuple[int, ...]
    layers: Layers


class PrefixCache:
    """Keys and values of token-id prefixes, least recently used forgotten first past `max_tokens`."""

    def __init__(self, max_tokens: int):
        assert max_tokens >= 1, f"a prefix cache needs max_tokens >= 1, got {max_tokens}"
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()  # least recently used first
        self.tokens = 0  # held over all entries
        self.hits = self.misses = self.tokens_reused = 0

    def lookup(self, ids: Sequence[int]) -> tuple[int, Entry | None]:
        """The longest prefix of `ids` held, at most len(ids) - 1 tokens (one must run to give logits):
        its length p and the entry holding it (positions 0..p-1 of the entry), or (0, None)."""
        ids, best, found = tuple(ids), 0, None
        for entry in self.entries.values():
            p = min(_common(entry.ids, ids), len(ids) - 1)
            if p > best:
                best, found = p, entry
        if found is None:
            self.misses += 1
            return 0, None
        self.entries.move_to_end(found.ids)
        self.hits += 1
        self.tokens_reused += best
        return best, found

    def store(self, ids: Sequence[int], layers: Layers) -> None:
        """Keep `layers` (per layer k, v with at least len(ids) positions) as the keys and values of `ids`."""
        key = tuple(ids)
        if not key or len(key) > self.max_tokens:
            return
        for held in list(self.entries):
            if held[: len(key)] == key:  # already served by a longer (or equal) entry
                self.entries.move_to_end(held)
                return
            if key[: len(held)] == held:  # a prefix of the new one: replaced by it
                self._drop(held)
        while self.entries and self.tokens + len(key) > self.max_tokens:
            self._drop(next(iter(self.entries)))
        n = len(key)
        copied = [(k[:, :n].clone(), v[:, :n].clone()) for k, v in layers]
        self.entries[key] = Entry(key, copied)
        self.tokens += n

    def read_into(self, ids: Sequence[int], cache: KVCache, row: int, start: int) -> int:
        """Copy the longest held prefix of `ids` into `cache` row `row`, slots start.. (slot start + j holds
        position j); how many tokens it copied."""
        p, entry = self.lookup(ids)
        if entry is not None:
            for (k, v), (ek, ev) in zip(cache.layers, entry.layers):  # (B, nkv, S, hs), (nkv, L, hs)
                k[row, :, start : start + p] = ek[:, :p]
                v[row, :, start : start + p] = ev[:, :p]
        return p

    def keep(self, ids: Sequence[int], cache: KVCache, row: int, start: int) -> None:
        """Store the keys and values of `ids`, which `cache` row `row` holds from slot `start` on."""
        end = start + len(ids)
        self.store(ids, [(k[row, :, start:end], v[row, :, start:end]) for k, v in cache.layers])

    def _drop(self, ids: tuple[int, ...]) -> None:
        del self.entries[ids]
        self.tokens -= len(ids)

    def stats(self) -> dict[str, Any]:
        """Counters only (no walk over the entries), so another thread may read them while it runs."""
        return {
            "entries": len(self.entries),
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "hits": self.hits,
            "misses": self.misses,
            "tokens_reused": self.tokens_reused,
        }


def _common(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The length of the longest common prefix of a and b."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i
