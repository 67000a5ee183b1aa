"""Time to first token of a chat's 6th turn, with and without the prefix cache (issue #17).

SmolLM2-135M-Instruct holds a six-turn conversation written below (a system prompt and six user messages;
its own greedy replies in between) so that the 6th turn's prompt carries about 1,000 tokens of history.
Each run is the whole conversation from the start, and the 6th turn's time to first token is measured:

- on the `tinylm chat` path: `Chat.send` -> `LM.stream` -> `generate_ids`, from the call to the first piece
  of text, with `LM.prefix_cache` a `PrefixCache(--tokens)` or None;
- on the server's path: the continuous `Batcher` that `tinylm serve` runs (its default 8 rows over a
  2,048-token cache), the prompt rendered and encoded as the server does, from `submit` to the first token.

Best of `--runs` runs each way; every run's replies must be the same with and without the cache (asserted).
Prints the times, the 6th prompt's length, how much of it was reused, and the ratios (the issue's target:
with <= 0.2x of without).

    python bench/prefix_cache.py [--runs 3] [--tokens 4096] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import time

import torch

import tinylm
from tinylm.chat.session import Chat
from tinylm.generate.continuous import Batcher, Request, Token
from tinylm.generate.detok import reply_text
from tinylm.generate.prefix import PrefixCache

SYSTEM = (
    "You are a patient assistant for the owner of a small neighbourhood bakery. Answer in plain words, keep "
    "each answer short and practical, and when numbers are involved show the arithmetic step by step. The "
    "owner is not an accountant and has little time: prefer a clear recommendation to a list of options, "
    "and say so plainly when a question needs an expert, such as a lawyer or a tax adviser."
)
TURNS = [
    "I run a bakery with two ovens and three staff. We open at seven in the morning and close at three in "
    "the afternoon, six days a week. Most of our sales are sourdough loaves, croissants and cinnamon buns. "
    "Lately customers complain that the sourdough is sold out by ten. How could I plan the morning bake so "
    "that we still have bread at noon without throwing much away at closing time? On a normal day we sell "
    "about sixty loaves, and on Saturdays closer to ninety.",
    "Thanks. One oven holds twelve loaves and a sourdough bake takes forty minutes, plus ten minutes to load "
    "and unload. The second oven is busy with croissants until half past eight. If the first bake starts at "
    "five thirty, how many sourdough loaves can we have ready by nine, and how many by noon if we keep both "
    "ovens on bread after the croissants are done? Assume the dough is ready whenever an oven is free, "
    "since we mix it the evening before.",
    "Our flour supplier raised prices by twelve percent this month. A loaf uses about five hundred grams of "
    "flour, and a twenty five kilogram bag used to cost thirty euros. We sell a loaf for four euros fifty. "
    "What does the flour in one loaf cost now, and should I raise the price of a loaf, or is the increase "
    "small enough to absorb for a few months while I look for another supplier? The other costs of a loaf, "
    "salt, energy and wages, come to about two euros.",
    "Another question about staff. One of my bakers wants to start at four instead of five so that she can "
    "leave earlier to pick up her children from school. The other two prefer the current hours. Would "
    "having one person start an hour earlier help with the sourdough problem we talked about, and what "
    "should I watch out for if one baker works alone in the kitchen for that first hour? She has worked "
    "with us for six years and knows both ovens well.",
    "We are also thinking about selling online for pick up the next morning, so people can reserve loaves "
    "the evening before. I worry that people will reserve and then not come. What rules have worked for "
    "small shops like mine, for example paying in advance, a deadline for pick up, or a limit on how many "
    "loaves one person can reserve? Keep it to the few rules that matter most. We would take orders "
    "through a simple web form and a card terminal at the counter.",
    "Putting all of this together, write me a short plan for next Monday: when each baker starts, what goes "
    "into each oven and when, how many sourdough loaves we aim to have by nine and by noon, and the price "
    "of a loaf after the flour increase. Use a short list, one line per item.",
]


def chat_run(lm: tinylm.LM, tokens: int, max_new: int) -> tuple[list[str], float, int, int]:
    """The whole conversation through `Chat`: the replies, the 6th turn's time to first piece, its prompt
    length and the tokens of it taken from the prefix cache."""
    lm.prefix_cache = PrefixCache(tokens) if tokens else None
    chat = Chat(lm, system=SYSTEM, max_new_tokens=max_new, temperature=0.0)
    replies = []
    for text in TURNS[:-1]:
        replies.append(chat.ask(text))
    reused = lm.prefix_cache.tokens_reused if lm.prefix_cache else 0
    start = time.perf_counter()
    pieces = chat.send(TURNS[-1])
    first = next(pieces)
    ttft = time.perf_counter() - start
    replies.append(first + "".join(pieces))
    prompt_tokens = len(lm.encode(lm.render_prompt(chat.last_prompt, chat=True, raw=False)[0]))
    reused = lm.prefix_cache.tokens_reused - reused if lm.prefix_cache else 0
    return replies, ttft, prompt_tokens, reused


def batcher_run(lm: tinylm.LM, tokens: int, max_new: int) -> tuple[list[str], float, int, int]:
    """The whole conversation through the server's `Batcher`, each prompt rendered and encoded as
    `tinylm serve` does: the replies, the 6th turn's time from submit to first token, its prompt length and
    the tokens of it taken from the prefix cache."""
    opts, params = lm.resolve_options({"max_new_tokens": max_new, "temperature": 0.0})
    stop_ids = tuple(lm.stop_token_ids(opts))
    block = lm.config.block_size
    messages = [{"role": "system", "content": SYSTEM}]
    replies, ttft, n, reused = [], 0.0, 0, 0
    with Batcher(lm.model, max_batch=8, max_len=min(block, 2048), prefix_cache_tokens=tokens) as batcher:
        for i, text in enumerate(TURNS):
            messages.append({"role": "user", "content": text})
            prompt, extra = lm.render_prompt(messages, chat=True, raw=False)
            ids = lm.encode(prompt)
            before = batcher.stats()["prefix_cache"] or {"tokens_reused": 0}
            start = time.perf_counter()
            job = batcher.submit(Request(tuple(ids), max_new, params=params, stop_ids=stop_ids))
            got = []
            for event in job.events(timeout=600):
                if isinstance(event, Token):
                    if not got:
                        first = time.perf_counter() - start
                    got.append(event.id)
            reply, _ = reply_text(lm.tokenizer, got, stop=[*opts.stop, *extra], stop_ids=stop_ids)
            replies.append(reply)
            messages.append({"role": "assistant", "content": reply})
            if i == len(TURNS) - 1:
                after = batcher.stats()["prefix_cache"] or {"tokens_reused": 0}
                ttft, n, reused = first, len(ids), after["tokens_reused"] - before["tokens_reused"]
    return replies, ttft, n, reused


def measure(name: str, run, lm: tinylm.LM, args: argparse.Namespace) -> float:
    """Best-of-runs 6th-turn times with and without the cache; the ratio."""
    best: dict[int, float] = {}
    replies: dict[int, list[str]] = {}
    for r in range(args.runs):
        for tokens in (args.tokens, 0):
            got, ttft, n, reused = run(lm, tokens, args.max_new_tokens)
            assert replies.setdefault(tokens, got) == got, f"{name}: replies changed between runs"
            best[tokens] = min(best.get(tokens, ttft), ttft)
            state = f"prefix cache {tokens} tokens" if tokens else "no prefix cache"
            print(f"{name} run {r + 1}, {state}: 6th turn {n} prompt tokens, {reused} reused, "
                  f"first token after {ttft * 1000:.0f} ms", flush=True)  # fmt: skip
    assert replies[args.tokens] == replies[0], f"{name}: the prefix cache changed the replies"
    ratio = best[args.tokens] / best[0]
    print(f"{name}: best {best[args.tokens] * 1000:.0f} ms with, {best[0] * 1000:.0f} ms without: "
          f"{ratio:.3f}x; replies identical ({sum(len(r) for r in replies[0])} characters over 6 turns)")  # fmt: skip
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096, help="the prefix cache's budget")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    lm = tinylm.load("smollm2-135m-instruct")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 weights", flush=True)
    chat = measure("tinylm chat (LM.stream)", chat_run, lm, args)
    served = measure("server (Batcher)", batcher_run, lm, args)
    print(f"ratios (with / without, target <= 0.2): chat {chat:.3f}x, server {served:.3f}x")


if __name__ == "__main__":
    main()
