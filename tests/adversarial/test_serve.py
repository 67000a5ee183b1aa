"""The OpenAI-compatible server against a hostile client: every request it can send, valid or not, gets an
answer in OpenAI's error shape with the right status (400 for the client's faults, never 500), a body past
the size limit gets 413 before it is read, a large prompt never stalls /health, and `serve()` refuses bad
arguments before loading the model. One real uvicorn server on loopback serves the whole module."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import torch

from tests.adversarial.conftest import cli, expect
from tinylm.api import load
from tinylm.errors import TinylmError
from tinylm.serve import create_app, running, serve
from tinylm.serve.guard import DEFAULT_MAX_REQUEST_BYTES, BodyLimit

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = DEFAULT_MAX_REQUEST_BYTES
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
HI = [{"role": "user", "content": "what is item one"}]


@pytest.fixture(scope="module")
def lm(ckpt):
    return load(ckpt)


@pytest.fixture(scope="module")
def url(lm):
    """One server for the module: an API key, 2 slots, the default body limit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from intra-op threads on a busy machine
    with running(create_app(lm, model_name="tiny", api_key=KEY, max_batch=2)) as base:
        yield base
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


@dataclass
class Raw:
    """A request body sent as these bytes (chunked: without Content-Length), with these headers."""

    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {**AUTH, "Content-Type": "application/json"})
    chunked: bool = False


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": HI, "max_tokens": 2, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "what is", "max_tokens": 2, **fields}


def body(text: str) -> Raw:
    return Raw(text.encode())


def oversize(chunked: bool) -> Raw:
    padding = "x" * LIMIT
    return Raw(json.dumps(chat(user=padding)).encode(), chunked=chunked)


CASES = [
    # chat: what passes today must keep passing
    ("chat ok", "POST", CHAT, chat(), 200, '"object":"chat.completion"'),
    ("chat stream ok", "POST", CHAT, chat(stream=True), 200, "data: [DONE]"),
    ("chat assistant without content", "POST", CHAT, chat(messages=[{"role": "assistant"}, *HI]), 400, "needs content or tool_calls"),
    ("chat text parts", "POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]), 200, "choices"),
    ("chat seed at the top with n 2", "POST", CHAT, chat(seed=2**63 - 1, n=2), 200, '"index":1'),
    ("chat lowest seed", "POST", CHAT, chat(seed=-(2**63)), 200, "choices"),
    ("chat logprobs", "POST", CHAT, chat(logprobs=True, top_logprobs=2), 200, "top_logprobs"),
    # chat: messages
    ("user without content", "POST", CHAT, chat(messages=[{"role": "user"}]), 400, "messages.0.content"),
    ("system without content", "POST", CHAT, chat(messages=[{"role": "system"}, *HI]), 400, "messages.0.content"),
    ("developer content null", "POST", CHAT, chat(messages=[*HI, {"role": "developer", "content": None}]), 400, "messages.1.content"),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, "messages"),
    ("messages not a list", "POST", CHAT, chat(messages="hi"), 400, "messages"),
    ("bad role", "POST", CHAT, chat(messages=[{"role": "robot", "content": "hi"}]), 400, "messages.0.role"),
    ("content a number", "POST", CHAT, chat(messages=[{"role": "user", "content": 7}]), 400, "messages.0.content"),
    ("image part", "POST", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "messages.0.content"),
    ("model missing", "POST", CHAT, {"messages": HI}, 400, "model: field required"),
    # chat: numbers out of range, wrong types
    ("temperature -1", "POST", CHAT, chat(temperature=-1), 400, "temperature: input should be greater than or equal to 0"),
    ("temperature 2.5", "POST", CHAT, chat(temperature=2.5), 400, "temperature"),
    ("temperature a string", "POST", CHAT, chat(temperature="hot"), 400, "temperature: input should be a valid number"),
    ("top_p 0", "POST", CHAT, chat(top_p=0), 400, "top_p: input should be greater than 0"),
    ("n 0", "POST", CHAT, chat(n=0), 400, "n: input should be greater than or equal to 1"),
    ("n 17", "POST", CHAT, chat(n=17), 400, "n: input should be less than or equal to 16"),
    ("max_tokens 0", "POST", CHAT, chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens beyond the window", "POST", CHAT, chat(max_tokens=1000), 400, "maximum context length is 32 tokens"),
    ("max_tokens 10**30", "POST", CHAT, chat(max_tokens=10**30), 400, "maximum context length"),
    ("max_completion_tokens 0", "POST", CHAT, chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("top_logprobs without logprobs", "POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs needs logprobs"),
    ("top_logprobs 21", "POST", CHAT, chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    ("presence_penalty 3", "POST", CHAT, chat(presence_penalty=3), 400, "presence_penalty"),
    ("top_k 0", "POST", CHAT, chat(top_k=0), 400, "top_k"),
    ("min_p 1.5", "POST", CHAT, chat(min_p=1.5), 400, "min_p"),
    ("repetition_penalty 0", "POST", CHAT, chat(repetition_penalty=0), 400, "repetition_penalty"),
    ("stop with 5 entries", "POST", CHAT, chat(stop=list("abcde")), 400, "at most 4 stop sequences, found 5"),
    ("empty stop string", "POST", CHAT, chat(stop=[""]), 400, "empty stop string"),
    ("seed 2**64", "POST", CHAT, chat(seed=2**64), 400, "seed: input should be less than or equal to"),
    ("seed below -2**63", "POST", CHAT, chat(seed=-(2**63) - 1), 400, "seed: input should be greater than"),
    ("seed 1e30", "POST", CHAT, chat(seed=1e30), 400, "seed"),
    ("seed 1.5", "POST", CHAT, chat(seed=1.5), 400, "fractional part"),
    ("unknown field", "POST", CHAT, chat(temprature=1), 400, "temprature: extra inputs are not permitted"),
    ("unknown model", "POST", CHAT, chat(model="gpt-4o"), 404, "the model `gpt-4o` does not exist"),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function"}]), 400, "tools.0.function: field required"),
    ("tool_choice without tools", "POST", CHAT, chat(tool_choice="required"), 400, "tool_choice needs tools"),
    ("tool message without its call", "POST", CHAT, chat(messages=[*HI, {"role": "tool", "content": "x"}]), 400, "needs tool_call_id"),
    ("json response_format, char vocabulary", "POST", CHAT, chat(response_format={"type": "json_object"}), 400, "vocabulary has no '{'"),
    ("response_format type", "POST", CHAT, chat(response_format={"type": "xml"}), 400, "json_schema"),
    ("logit_bias", "POST", CHAT, chat(logit_bias={"1": 5}), 400, "logit_bias is not supported"),
    ("rag without --rag", "POST", CHAT, chat(rag=True), 400, "started without --rag"),
    # completions
    ("completion ok", "POST", COMPLETIONS, completion(), 200, '"object":"text_completion"'),
    ("completion token ids ok", "POST", COMPLETIONS, completion(prompt=[3, 4, 5], n=2), 200, '"index":1'),
    ("completion logprobs 5", "POST", COMPLETIONS, completion(logprobs=5), 200, "text_offset"),
    ("completion logprobs 6", "POST", COMPLETIONS, completion(logprobs=6), 400, "logprobs: input should be less than or equal to 5"),
    ("empty prompt list", "POST", COMPLETIONS, completion(prompt=[]), 400, "prompt: expected a string or a non-empty list"),
    ("empty token list", "POST", COMPLETIONS, completion(prompt=[[]]), 400, "found an empty list"),
    ("token id too large", "POST", COMPLETIONS, completion(prompt=[10**6]), 400, "token ids must be in 0.."),
    ("token id negative", "POST", COMPLETIONS, completion(prompt=[1, -1]), 400, "found -1"),
    ("token id 2**70", "POST", COMPLETIONS, completion(prompt=[2**70]), 400, "token ids must be in 0.."),
    ("many bad token ids", "POST", COMPLETIONS, completion(prompt=list(range(10**5, 10**5 + 1000))), 400, ", ..."),
    ("prompt an object", "POST", COMPLETIONS, completion(prompt={"a": 1}), 400, "prompt"),
    ("prompt missing", "POST", COMPLETIONS, {"model": "tiny"}, 400, "prompt: field required"),
    ("prompt beyond the window", "POST", COMPLETIONS, completion(prompt="what is item " * 20), 400, "maximum context length is 32 tokens"),
    ("echo", "POST", COMPLETIONS, completion(echo=True), 400, "echo is not supported"),
    ("suffix", "POST", COMPLETIONS, completion(suffix="!"), 400, "suffix is not supported"),
    ("best_of 2", "POST", COMPLETIONS, completion(best_of=2), 400, "best_of other than n"),
    ("completion unknown model", "POST", COMPLETIONS, completion(model=""), 404, "does not exist"),
    # embeddings
    ("embedding ok", "POST", EMBEDDINGS, {"model": "tiny", "input": ["one", "two"]}, 200, '"object":"embedding"'),
    ("embedding base64 ok", "POST", EMBEDDINGS, {"model": "tiny", "input": "one", "encoding_format": "base64"}, 200, "embedding"),
    ("embedding empty list", "POST", EMBEDDINGS, {"model": "tiny", "input": []}, 400, "non-empty list of strings"),
    ("embedding token ids", "POST", EMBEDDINGS, {"model": "tiny", "input": [[1, 2]]}, 400, "list of strings"),
    ("embedding dimensions 7", "POST", EMBEDDINGS, {"model": "tiny", "input": "x", "dimensions": 7}, 400, "embeddings have 32"),
    ("embedding format hex", "POST", EMBEDDINGS, {"model": "tiny", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("embedding pooling max", "POST", EMBEDDINGS, {"model": "tiny", "input": "x", "pooling": "max"}, 400, "pooling"),
    ("embedding unknown model", "POST", EMBEDDINGS, {"model": "ada", "input": "x"}, 404, "does not exist"),
    # models and routes
    ("models", "GET", "/v1/models", None, 200, '"id":"tiny"'),
    ("one model", "GET", "/v1/models/tiny", None, 200, '"owned_by":"tinylm"'),
    ("unknown model card", "GET", "/v1/models/gpt-4", None, 404, "does not exist"),
    ("no such route", "POST", "/v1/nothing", {}, 404, "invalid url (post /v1/nothing)"),
    ("wrong method", "DELETE", "/v1/models", None, 405, "method not allowed"),
    # auth
    ("health needs no key", "GET", "/health", Raw(headers={}), 200, '"status":"ok"'),
    ("no key", "GET", "/v1/models", Raw(headers={}), 401, "didn't provide an api key"),
    ("wrong key", "GET", "/v1/models", Raw(headers={"Authorization": "Bearer nope"}), 401, "incorrect api key"),
    ("blank bearer", "GET", "/v1/models", Raw(headers={"Authorization": "Bearer"}), 401, "didn't provide"),
    ("basic scheme", "GET", "/v1/models", Raw(headers={"Authorization": f"Basic {KEY}"}), 401, "didn't provide"),
    ("no key on a post", "POST", CHAT, Raw(json.dumps(chat()).encode(), headers={"Content-Type": "application/json"}), 401, "api key"),
    # malformed bodies
    ("broken JSON", "POST", CHAT, body('{"model": "tiny", "messages": ['), 400, "request body: not valid json"),
    ("not JSON", "POST", CHAT, body("hello"), 400, "not valid json (expecting value at line 1 column 1)"),
    ("not UTF-8", "POST", CHAT, Raw(b'{"model": "\xff\xfe"}'), 400, "not valid utf-8 (byte 0xff at offset 11)"),
    ("nested 100k deep", "POST", CHAT, body('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"), 400, "nested too deeply"),
    ("an array", "POST", CHAT, body("[1, 2]"), 400, "expected a json object, found an array"),
    ("null", "POST", CHAT, body("null"), 400, "found null"),
    ("a number", "POST", COMPLETIONS, body("7"), 400, "found a number"),
    ("empty body", "POST", CHAT, Raw(b""), 400, "found an empty body"),
    ("NaN", "POST", CHAT, body(json.dumps(chat(temperature=float("nan")))), 400, "nan is not a json number"),
    ("Infinity", "POST", CHAT, body('{"model": "tiny", "messages": [], "top_p": -Infinity}'), 400, "-infinity is not"),
    ("1e999", "POST", CHAT, body('{"model": "tiny", "messages": [], "top_p": 1e999}'), 400, "the number 1e999 is out of range"),
    ("5000 digits", "POST", CHAT, body('{"model": "tiny", "seed": ' + "9" * 5000 + "}"), 400, "has 5000 digits"),
    ("text/plain", "POST", CHAT, Raw(json.dumps(chat()).encode(), headers={**AUTH, "Content-Type": "text/plain"}), 400, "expected content-type: application/json, found content-type: text/plain"),
    ("form", "POST", CHAT, Raw(b"model=tiny", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"}), 400, "content-type: application/json"),
    ("no Content-Type", "POST", CHAT, Raw(json.dumps(chat()).encode(), headers=AUTH), 400, "found no content-type"),
    ("JSON with a charset", "POST", CHAT, Raw(json.dumps(chat()).encode(), headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}), 200, "choices"),
    # size
    ("oversize with Content-Length", "POST", CHAT, oversize(chunked=False), 413, f"larger than the {LIMIT} bytes"),
    ("oversize chunked", "POST", CHAT, oversize(chunked=True), 413, "--max-request-bytes"),
    ("oversize without a key", "POST", CHAT, Raw(b"x" * (LIMIT + 1), headers={}), 413, "larger than"),
    ("just under the limit", "POST", COMPLETIONS, body(json.dumps(completion(prompt="item " * (LIMIT // 5 - 20)))), 400, "maximum context length"),
]  # fmt: skip


def send(http: httpx.Client, method: str, path: str, payload: Any) -> httpx.Response:
    if isinstance(payload, Raw):
        content = iter([payload.body[i : i + 65536] for i in range(0, len(payload.body), 65536)])
        return http.request(
            method, path, content=content if payload.chunked else payload.body, headers=payload.headers
        )
    return http.request(method, path, json=payload, headers=AUTH)


def check_error(response: httpx.Response) -> dict[str, Any]:
    """The house rule for every error: OpenAI's shape, a message, no traceback."""
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["type"] == ("server_error" if response.status_code >= 500 else "invalid_request_error")
    return error


@pytest.mark.parametrize(
    "method,path,payload,status,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_request_gets_its_answer(http, method, path, payload, status, fragment):
    response = send(http, method, path, payload)
    assert response.status_code == status, response.text[:500]
    if status >= 400:
        assert fragment.lower() in check_error(response)["message"].lower()
    else:
        assert fragment in response.text or fragment in response.text.replace(": ", ":")


def test_the_table_covers_the_ground():
    assert len(CASES) >= 45 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[2] for c in CASES} >= {CHAT, COMPLETIONS, EMBEDDINGS, "/v1/models"}
    assert {c[4] for c in CASES} >= {200, 400, 401, 404, 405, 413}


def test_a_declared_oversize_body_is_refused_before_it_is_sent(url):
    """Only the headers go out: the 413 comes back without the server waiting for a byte of the body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n"
        sock.sendall(head.encode())
        reply = b""
        while b"request_too_large" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"code": "request_too_large"' in reply and "Traceback" not in reply


def test_body_limit_counts_a_chunked_body_and_replays_a_small_one():
    """The middleware alone: a body without Content-Length is counted as it streams in; a small one reaches
    the app whole, in one message, and the app hears a later disconnect."""
    import asyncio

    async def drive(chunks: list[bytes], limit: int) -> tuple[list[dict], list[dict]]:
        incoming = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        incoming.append({"type": "http.disconnect"})
        seen, sent = [], []

        async def receive():
            return incoming.pop(0)

        async def send(message):
            sent.append(message)

        async def app(scope, receive, send):
            seen.append(await receive())
            seen.append(await receive())

        await BodyLimit(app, max_bytes=limit)({"type": "http", "headers": []}, receive, send)
        return seen, sent

    seen, sent = asyncio.run(drive([b"ab", b"cd", b"e"], limit=5))
    assert not sent and seen == [
        {"type": "http.request", "body": b"abcde", "more_body": False},
        {"type": "http.disconnect"},
    ]
    seen, sent = asyncio.run(drive([b"ab", b"cd", b"ef", b"never read"], limit=5))
    assert not seen and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_health_answers_while_a_large_prompt_is_tokenized(url, http, lm, monkeypatch):
    """~1 MB of prompts (under the limit) is tokenized in a worker thread: /health answers in the middle of
    it, quickly. Every encode call is timed; health answers must fall between the first and the last."""
    calls: list[tuple[float, float]] = []
    encode = lm.encode

    def timed(text: str) -> list[int]:
        start = time.monotonic()
        ids = encode(text)
        calls.append((start, time.monotonic()))
        return ids

    monkeypatch.setattr(lm, "encode", timed)
    prompts = ["wh"] * 150_000  # many small prompts, each its own encode call
    payload = completion(prompt=prompts, max_tokens=1000)  # refused after tokenizing: no generation
    assert LIMIT / 2 < len(json.dumps(payload)) < LIMIT
    big: dict[str, httpx.Response] = {}
    worker = threading.Thread(
        target=lambda: big.update(r=httpx.post(url + COMPLETIONS, json=payload, headers=AUTH, timeout=60))
    )
    worker.start()
    health: list[tuple[float, float]] = []
    with httpx.Client(base_url=url, timeout=10) as probe:
        while worker.is_alive():
            start = time.monotonic()
            assert probe.get("/health").status_code == 200
            health.append((start, time.monotonic()))
            time.sleep(0.005)
    worker.join()
    assert big["r"].status_code == 400 and "maximum context length" in check_error(big["r"])["message"]
    assert len(calls) == len(prompts)
    first, last = calls[0][0], calls[-1][1]
    during = [(s, e) for s, e in health if first < s and e < last]
    assert during, f"no /health answer while tokenizing ({last - first:.2f} s, {len(health)} probes)"
    waits = sorted(e - s for s, e in during)  # tens of ms: the tokenizing thread holds the GIL in turns
    assert waits[len(waits) // 2] < 0.25 and waits[-1] < 1.0, waits


BAD_SERVE = [
    ({"port": 99999}, "--port: expected a port number in 0..65535, found 99999"),
    ({"port": -1}, "--port: expected a port number in 0..65535, found -1"),
    ({"port": "8000"}, "--port: expected a port number in 0..65535, found '8000'"),
    ({"port": True}, "--port"),
    ({"host": ""}, "--host: expected an interface to bind"),
    ({"host": "   "}, "--host"),
    ({"max_batch": 0}, "--max-batch: expected >= 1, found 0"),
    ({"max_batch": -3}, "--max-batch: expected >= 1, found -3"),
    ({"max_len": 0}, "--max-len: expected >= 2, found 0"),
    ({"max_len": 1}, "--max-len: expected >= 2, found 1"),
    ({"prefix_cache_tokens": -1}, "--prefix-cache-tokens: expected >= 0, found -1"),
    ({"max_request_bytes": 0}, "--max-request-bytes: expected a number of bytes >= 1, found 0"),
    ({"max_request_bytes": -5}, "--max-request-bytes"),
    ({"device": "foo"}, "--device 'foo': expected cpu, cuda, cuda:N or mps"),
    ({"device": ""}, "--device '': expected cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:x"}, "--device 'cuda:x': expected"),
    ({"device": "meta"}, "--device meta: expected cpu, cuda, cuda:N or mps"),
    ({"device": "cuda:99"}, "--device cuda:99:"),
    pytest.param({"device": "cuda"}, "--device cuda: CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param({"device": "mps"}, "--device mps: MPS is not available on this machine",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    ({"api_key": ""}, "--api-key: an empty key would disable authentication; give a non-empty key or leave the option out"),
    ({"api_key": "  \t"}, "--api-key: an empty key would disable authentication"),
    ({"rag": "missing.db"}, "--rag missing.db: no such RAG database"),
    ({"port": 70000, "device": "foo", "api_key": ""}, "--port"),
]  # fmt: skip


@pytest.mark.parametrize("options,needle", BAD_SERVE)
def test_serve_refuses_bad_arguments_before_loading(tmp_path, options, needle):
    """The model does not exist: each refusal comes before the load would have failed on it."""
    with pytest.raises(TinylmError) as info:
        serve(str(tmp_path / "no" / "model"), **options)
    message = str(info.value)
    assert needle in message and "no such checkpoint" not in message
    if len(options) > 1:  # every problem at once, each on its line
        assert len(message.splitlines()) == len(options)


def test_a_negative_prefix_cache_is_refused_by_tinylm_serve(tmp_path):
    expect(
        cli("serve", tmp_path / "no" / "model", "--prefix-cache-tokens", "-5"),
        2,
        "--prefix-cache-tokens: expected >= 0, found -5",
    )


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"api_key": ""}, "an empty key would disable authentication"),
        ({"api_key": " "}, "an empty key would disable authentication"),
        ({"max_request_bytes": 0}, "--max-request-bytes"),
    ],
)
def test_create_app_refuses_a_blank_key_and_a_zero_limit(lm, options, needle):
    with pytest.raises(TinylmError, match=needle):
        create_app(lm, model_name="tiny", **options)
