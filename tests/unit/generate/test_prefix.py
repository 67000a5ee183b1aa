"""The prefix cache: longest-prefix lookup, the LRU token budget, and exactness where it is used: the
continuous batcher and the one-prompt engine give the same greedy tokens with and without it, and the
logits after a cached prefill equal those of a full one."""

import pytest
import torch

from tests.unit.generate.test_continuous import _alone, _model, _staggered, _tokens
from tinylm.generate.continuous import Batcher, Request, SharedCache
from tinylm.generate.engine import generate_ids
from tinylm.generate.prefix import PrefixCache
from tinylm.model import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")


def _filled(n_layer=2, rows=2, slots=16) -> KVCache:
    """A cache whose key at (row, slot) is 100 * row + slot and whose value is its negative."""
    cache = KVCache(n_layer, rows, 1, slots, 2)
    for k, v in cache.layers:  # (B, 1, S, 2)
        marks = 100 * torch.arange(rows)[:, None] + torch.arange(slots)[None]  # (B, S)
        k.copy_(marks[:, None, :, None].expand_as(k).float())
        v.copy_(-k)
    return cache


def _keep(prefix: PrefixCache, ids, row=0, start=0) -> None:
    prefix.keep(ids, _filled(), row=row, start=start)


def test_lookup_finds_the_longest_prefix_and_leaves_one_token_to_run():
    prefix = PrefixCache(100)
    _keep(prefix, [1, 2, 3, 4, 5])
    _keep(prefix, [1, 2, 9], row=1, start=4)
    assert prefix.lookup([1, 2, 3, 7])[0] == 3
    p, entry = prefix.lookup([1, 2, 9, 9])
    assert p == 3 and entry.ids == (1, 2, 9) and entry.layers[0][0][0, :, 0].tolist() == [104, 105, 106]
    assert prefix.lookup([1, 2, 3])[0] == 2  # the whole prompt is held: its last token still runs
    assert prefix.lookup([8, 1, 2]) == (0, None)
    assert prefix.stats() == {"entries": 2, "tokens": 8, "max_tokens": 100, "hits": 3, "misses": 1,
                              "tokens_reused": 8}  # fmt: skip


def test_read_into_copies_the_prefix_to_the_row_and_slots_asked_for():
    prefix = PrefixCache(100)
    _keep(prefix, [4, 5, 6, 7], row=1, start=2)  # keys 102..105
    target = KVCache(2, 2, 1, 16, 2)
    assert prefix.read_into([4, 5, 6, 8, 9], target, row=0, start=5) == 3
    for k, v in target.layers:
        assert k[0, 0, :, 0].tolist() == [0] * 5 + [102, 103, 104] + [0] * 8
        assert torch.equal(v, -k) and not k[1].any()
    assert prefix.read_into([3], target, row=0, start=0) == 0


def test_the_budget_evicts_least_recently_used_and_refuses_what_cannot_fit():
    prefix = PrefixCache(10)
    _keep(prefix, [1, 1, 1, 1])
    _keep(prefix, [2, 2, 2, 2])
    prefix.lookup([1, 1, 1, 5])  # entry 1 used: entry 2 is now the least recently used
    _keep(prefix, [3, 3, 3, 3])
    assert list(prefix.entries) == [(1, 1, 1, 1), (3, 3, 3, 3)] and prefix.tokens == 8
    _keep(prefix, list(range(11)))  # longer than the whole budget: not stored, nothing evicted
    assert prefix.tokens == 8 and len(prefix.entries) == 2
    _keep(prefix, list(range(10)))  # exactly the budget: everything else goes
    assert list(prefix.entries) == [tuple(range(10))] and prefix.tokens == 10


def test_an_entry_extended_is_replaced_and_a_prefix_of_one_is_not_stored_twice():
    prefix = PrefixCache(100)
    _keep(prefix, [1, 2, 3])
    _keep(prefix, [1, 2, 3, 4, 5])
    assert list(prefix.entries) == [(1, 2, 3, 4, 5)] and prefix.tokens == 5
    _keep(prefix, [9])
    _keep(prefix, [1, 2])  # held already: only marked as used
    assert list(prefix.entries) == [(9,), (1, 2, 3, 4, 5)] and prefix.tokens == 6


SYSTEM = [7, 3, 9, 1, 4, 4, 8, 2, 6, 5, 11, 13]


def test_batcher_with_a_prefix_cache_gives_the_same_greedy_tokens():
    """A first request ends and is kept; then requests sharing its system prompt join while others run,
    one is the first prompt plus part of its reply (held whole), and the cursor moves in a short cache."""
    model = _model()
    first = Request((*SYSTEM, 20, 21), 6)
    with Batcher(model, max_batch=3, max_len=40, prefix_cache_tokens=200) as batcher:
        reply, _, _ = _tokens(batcher.submit(first))
        assert batcher.stats()["prefix_cache"]["tokens"] == len(first.prompt) + 6 - 1  # last token never fed
        tails = [(30, 31, 32), (33,), (20, 21, *reply[:3]), (34, 35, 36, 37, 38), (20, 21), (39, 40)]
        requests = [Request((*SYSTEM, *t), 14) for t in tails]
        results = _staggered(batcher, requests)
        stats = batcher.stats()["prefix_cache"]
    for request, (tokens, _, reason) in zip(requests, results):
        want = _alone(model, list(request.prompt), request)
        assert (tokens, reason) == (want.tokens, want.finish_reason)
    assert stats["hits"] == len(requests) and stats["misses"] == 1
    held_whole = 4 + 1  # two prompts are held whole, all but their last token
    assert stats["tokens_reused"] >= len(requests) * len(SYSTEM) + held_whole


def test_batcher_keeps_rows_that_ended_by_stop_or_length_only():
    model = _model()
    with Batcher(model, max_batch=1, prefix_cache_tokens=100) as batcher:
        job = batcher.submit(Request(tuple(SYSTEM), 30))
        events = job.events(timeout=30)
        next(events)
        job.cancel()
        list(events)
        assert batcher.stats()["prefix_cache"]["tokens"] == 0
        _tokens(batcher.submit(Request(tuple(SYSTEM), 3)))
        assert batcher.stats()["prefix_cache"]["tokens"] == len(SYSTEM) + 2
    assert Batcher(model).stats()["prefix_cache"] is None


def _reply(model, prompt, prefix_cache, stop, *, stop_in_engine):
    """Greedy tokens up to a stop id; the caller watches for it itself (as `LM.stream` does) unless the
    engine is told to stop there."""
    tokens = []
    ids = generate_ids(
        model, prompt, max_new_tokens=10, block_size=model.config.block_size,
        stop_ids=[stop] if stop_in_engine else [], prefix_cache=prefix_cache,
    )  # fmt: skip
    for token in ids:
        tokens.append(token)
        if token == stop:
            break
    ids.close()
    return tokens


def test_engine_turns_of_a_chat_give_the_same_replies_with_a_prefix_cache():
    model = _model(block_size=128)
    prefix = PrefixCache(500)
    stop = generate_ids(model, SYSTEM, max_new_tokens=10, block_size=128)
    stop = list(stop)[4]  # a token the first reply holds
    prompt, lengths = [*SYSTEM, 30, 31], []
    for turn in range(4):
        with_cache = _reply(model, prompt, prefix, stop, stop_in_engine=turn % 2 == 1)
        assert with_cache == _reply(model, prompt, None, stop, stop_in_engine=False)
        assert prefix.tokens >= len(prompt) + len(with_cache) - 1
        lengths.append(len(prompt))
        prompt = [*prompt, *with_cache, 2, 40 + turn, 41]  # the next user message after the reply
    assert prefix.hits == 3 and prefix.misses == 1
    assert prefix.tokens_reused >= sum(lengths[:-1])


@pytest.mark.parametrize("pos", ["rope", "learned", "sinusoidal", "alibi"])
def test_logits_after_a_cached_prefill_equal_a_full_prefill(pos):
    """In float64, so that only rounding separates the two (a prefix off by 0.1% moves these logits by
    1e-3 or more); in float32 the two differ by about 1e-5 of the logits' size, passes of different lengths
    rounding differently."""
    model = _model(pos, n_kv_head=2).double()
    ids = [(5 * i + 3) % 50 for i in range(20)]
    device = torch.device("cpu")
    with torch.no_grad():
        full = SharedCache(model, 2, 48, device)
        full.admit([20])
        want = full.prefill(0, ids)
        prefix = PrefixCache(100)
        layout = SharedCache(model, 2, 48, device, prefix)
        layout.admit([12])
        layout.prefill(0, ids[:12])
        layout.free(0, keep=ids[:12])
        layout.admit([20])
        got = layout.prefill(1, ids)
    assert prefix.tokens_reused == 12
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
    assert want.abs().max() > 1  # sharp logits, not zeros
