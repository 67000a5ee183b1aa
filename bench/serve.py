"""Serving throughput: N concurrent streaming clients against one client alone, on loopback.

Starts `tinylm serve` in a subprocess (the model on the GPU when there is one), then runs the same streaming
completion requests first from one client, then from `--clients` clients at once, and prints the generated
tokens/s of each and their ratio: what continuous batching buys. The model is a small random GPT built in a
temporary folder (4 layers, 256 dims, its end-of-text logit zeroed so replies run their full budget)
unless `--model` names a checkpoint or a pretrained model. `--shape smollm2` builds a random GPT of
SmolLM2-135M's shape instead (30 layers, 576 dims, vocab 49152, with a word-level tokenizer of as many
made-up words), for a GPU machine that the real weights cannot reach; issue #5's figure is
`--shape smollm2 --clients 32`.

    python bench/serve.py [--clients 8] [--requests 3] [--max-tokens 64] [--model smollm2-135m-instruct]
                          [--shape tiny|smollm2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_model(directory: Path) -> Path:
    from tinylm.checkpoint import save_checkpoint
    from tinylm.model import GPTConfig, build_model
    from tinylm.tokenizers import train_tokenizer

    tok = train_tokenizer("bpe", ["the quick brown fox jumps over the lazy dog " * 50], vocab_size=512)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=4, n_head=4, n_embd=256, pos="rope")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_id] = (
            0  # a zero logit is hardly ever the top one: replies run their budget
        )
    save_checkpoint(directory, model=model, config=cfg, tokenizer=tok, meta={})
    return directory


def smollm2_shaped(directory: Path) -> Path:
    """A random GPT of SmolLM2-135M's shape and a word-level tokenizer with one made-up word per id (so
    every generated id decodes), its end-of-text logit zeroed; saved as a checkpoint in `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from common import smollm2_hf
    from tinylm.checkpoint import save_checkpoint
    from tinylm.convert import hf_to_tinylm
    from tinylm.tokenizers import HFTokenizer

    model, cfg = hf_to_tinylm(smollm2_hf(pretrained=False))
    words = {"<unk>": 0, "<|endoftext|>": 1, **{f"w{i}": i for i in range(2, cfg.vocab_size)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>")
    with torch.no_grad():
        model.lm_head.weight[1] = 0  # tied with the embedding row: a zero logit is hardly ever the top one
    save_checkpoint(directory, model=model, config=cfg, tokenizer=HFTokenizer(hf_tok), meta={})
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["serve", model, "--port", str(port), "--max-batch", str(max_batch)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not come up in 300 s")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).raise_for_status()
            return proc
        except httpx.TransportError:
            time.sleep(0.3)


async def client_run(client, model: str, requests: int, max_tokens: int, who: int) -> tuple[int, list[float]]:
    """Streaming completions one after another: (tokens generated, seconds to each first token)."""
    tokens, first = 0, []
    for i in range(requests):
        start = time.perf_counter()
        stream = await client.completions.create(
            model=model,
            prompt=f"Request {who}.{i}: once upon a time",
            max_tokens=max_tokens,
            temperature=0.8,
            seed=who * 1000 + i,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and len(first) == i:
                first.append(time.perf_counter() - start)
            if chunk.usage:
                tokens += chunk.usage.completion_tokens
    return tokens, first


async def measure(url: str, model: str, clients: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """(aggregate tokens/s, mean seconds to the first token) of `clients` clients at once."""
    import openai

    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600
    ) as client:
        start = time.perf_counter()
        runs = await asyncio.gather(
            *(client_run(client, model, requests, max_tokens, who) for who in range(clients))
        )
        seconds = time.perf_counter() - start
    firsts = [t for _, f in runs for t in f]
    return sum(n for n, _ in runs) / seconds, sum(firsts) / max(len(firsts), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint dir or model name (default: a small random GPT)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--shape", choices=["tiny", "smollm2"], default="tiny", help="the random model's shape"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        build = smollm2_shaped if args.shape == "smollm2" else tiny_model
        model = args.model or str(build(Path(tmp) / args.shape))
        port = free_port()
        server = start_server(model, port, max_batch=args.clients)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(measure(url, model, 1, 1, 8))  # warm-up
            one, one_ttft = asyncio.run(measure(url, model, 1, args.requests, args.max_tokens))
            many, many_ttft = asyncio.run(measure(url, model, args.clients, args.requests, args.max_tokens))
        finally:
            server.terminate()
            server.wait(timeout=60)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"model {args.model or 'random ' + args.shape + '-shaped GPT'} on {device}; "
        f"{args.requests} x {args.max_tokens} tokens per client"
    )
    print(f"  1 client:   {one:8.1f} tokens/s  (first token after {one_ttft * 1000:.0f} ms)")
    print(f"  {args.clients} clients: {many:8.1f} tokens/s  (first token after {many_ttft * 1000:.0f} ms)")
    print(f"  ratio {many / one:.2f}x")


if __name__ == "__main__":
    main()
