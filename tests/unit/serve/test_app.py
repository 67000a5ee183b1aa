"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn server on
loopback: completions, chat, streaming, embeddings, n > 1, seeds, logprobs, every error, a client that goes
away mid-stream, RAG through a fake retriever, and 32 concurrent streaming clients."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import torch

from tests.unit.serve.conftest import KEY
from tinylm import load
from tinylm.chat.prompts import with_context
from tinylm.serve import create_app, running


@pytest.fixture(scope="module")
def server(checkpoint):
    """(base URL, app) of a server with an API key and 4 slots."""
    app = create_app(load(checkpoint), model_name="tiny", api_key=KEY, max_batch=4)
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _batcher(server):
    return server[1].state.server.batcher


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo there"}]


def test_models_health_and_page(server, client):
    url, _ = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "tinylm"
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["rag"] is False
    assert health["context_length"] == 1024 and health["max_batch"] == 4
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "getReader" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "src=" not in page.text  # no CDN


def test_completion_equals_the_python_api(client, lm):
    done = client.completions.create(model="tiny", prompt="héllo", max_tokens=12, temperature=0)
    want = lm.complete(["héllo"], raw=True, max_new_tokens=12)[0]
    assert done.choices[0].text == want.text
    assert done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == len(lm.tokenizer.encode("héllo"))
    assert done.usage.completion_tokens == 12 and done.usage.total_tokens == done.usage.prompt_tokens + 12
    default = client.completions.create(model="tiny", prompt="héllo")
    assert default.usage.completion_tokens == 16  # OpenAI's default budget for completions
    many = client.completions.create(model="tiny", prompt=["héllo", "the quick"], max_tokens=5)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == lm.generate("the quick", raw=True, max_new_tokens=5)
    ids = lm.tokenizer.encode("héllo")
    assert client.completions.create(model="tiny", prompt=ids, max_tokens=12).choices[0].text == want.text


def test_chat_equals_the_python_api(client, lm):
    done = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10)
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == lm.generate(MESSAGES, max_new_tokens=10)
    prompt, _ = lm.render_prompt(MESSAGES, chat=True, raw=False)
    assert done.usage.prompt_tokens == len(lm.tokenizer.encode(prompt))
    parts = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "héllo there"}]},
    ]
    same = client.chat.completions.create(model="tiny", messages=parts, max_completion_tokens=10)
    assert same.choices[0].message.content == done.choices[0].message.content


def test_streams_concatenate_to_the_full_reply(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    text = client.completions.create(model="tiny", prompt="the quick", max_tokens=15).choices[0].text
    stream = client.completions.create(model="tiny", prompt="the quick", max_tokens=15, stream=True)
    parts = [c.choices[0] for c in stream]
    assert "".join(p.text for p in parts) == text and parts[-1].finish_reason == "length"


def test_n_choices_and_seeds_repeat(client, lm):
    kw = dict(model="tiny", prompt="héllo", max_tokens=12, temperature=1.0, top_p=0.9, n=3, seed=7)
    first, again = client.completions.create(**kw), client.completions.create(**kw)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1  # choice j samples with seed + j
    for j, text in enumerate(texts):
        assert text == lm.generate(
            "héllo", raw=True, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7 + j
        )
    chat = dict(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0.8, seed=3, n=2)
    streamed = {}
    for c in client.chat.completions.create(**chat, stream=True):
        for choice in c.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    whole = client.chat.completions.create(**chat)
    assert [streamed[0], streamed[1]] == [c.message.content for c in whole.choices]


def test_stop_strings_and_penalties(client, lm):
    greedy = lm.generate("héllo", raw=True, max_new_tokens=30)
    stop = greedy[10:13]
    cut = client.completions.create(model="tiny", prompt="héllo", max_tokens=30, stop=[stop])
    assert cut.choices[0].text == greedy[: greedy.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 30
    streamed = client.completions.create(model="tiny", prompt="héllo", max_tokens=30, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    kw = dict(max_tokens=20, presence_penalty=0.8, frequency_penalty=1.5)
    penalised = client.completions.create(model="tiny", prompt="héllo", **kw).choices[0].text
    want = lm.generate("héllo", raw=True, max_new_tokens=20, presence_penalty=0.8, frequency_penalty=1.5)
    assert penalised == want and penalised != lm.generate("héllo", raw=True, max_new_tokens=20)


def test_logprobs_in_both_shapes(client, lm):
    done = client.completions.create(model="tiny", prompt="héllo", max_tokens=6, logprobs=3)
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    greedy = lm.complete(["héllo"], raw=True, max_new_tokens=6, logprobs=True)[0]
    assert lp.tokens == lm.tokenizer.token_strings(greedy.tokens)
    torch.testing.assert_close(
        torch.tensor(lp.token_logprobs), torch.tensor(greedy.logprobs), atol=1e-4, rtol=0
    )
    chat = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=5, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob for c in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy takes the most likely token
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_embeddings_equal_lm_embed(client, lm):
    texts = ["héllo", "the quick brown fox"]
    want = lm.embed(texts)
    got = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 by default
    assert [d.index for d in got.data] == [0, 1]
    torch.testing.assert_close(torch.tensor([d.embedding for d in got.data]), want, atol=1e-5, rtol=0)
    floats = client.embeddings.create(model="tiny", input="héllo", encoding_format="float")
    torch.testing.assert_close(torch.tensor(floats.data[0].embedding), want[0], atol=1e-5, rtol=0)
    assert floats.usage.prompt_tokens == len(lm.tokenizer.encode("héllo"))
    last = client.embeddings.create(model="tiny", input="héllo", extra_body={"pooling": "last"})
    torch.testing.assert_close(torch.tensor(last.data[0].embedding), lm.embed("héllo", pooling="last")[0])


def _error(call, status):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    assert info.value.status_code == status
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_errors_in_openai_shape(server, client):
    url, _ = server
    for key in ("wrong-key", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = httpx.get(url + "/v1/models", headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    assert _error(lambda: wrong.models.list(), 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):  # the client's own class for 401
        wrong.models.list()

    msgs = [{"role": "user", "content": "hi"}]
    for call in (
        lambda: client.chat.completions.create(model="gpt-4o", messages=msgs),
        lambda: client.completions.create(model="gpt-4o", prompt="hi"),
        lambda: client.embeddings.create(model="gpt-4o", input="hi"),
        lambda: client.models.retrieve("gpt-4o"),
    ):
        body = _error(call, 404)
        assert body["code"] == "model_not_found" and body["param"] == "model"

    body = _error(lambda: client.completions.create(model="tiny", prompt="hi", temperature=5), 400)
    assert body["param"] == "temperature" and "less than or equal to 2" in body["message"]
    body = _error(lambda: client.chat.completions.create(model="tiny", messages=[]), 400)
    assert body["param"] == "messages"
    body = _error(
        lambda: client.chat.completions.create(model="tiny", messages=msgs, extra_body={"temprature": 1}), 400
    )
    assert body["param"] == "temprature" and "Extra inputs" in body["message"]
    body = _error(lambda: client.completions.create(model="tiny", prompt="hi", echo=True), 400)
    assert body["param"] == "echo" and body["code"] == "unsupported_parameter"
    body = _error(lambda: client.chat.completions.create(model="tiny", messages=msgs, top_logprobs=2), 400)
    assert body["param"] == "top_logprobs"
    body = _error(
        lambda: client.chat.completions.create(model="tiny", messages=msgs, extra_body={"rag": True}), 400
    )
    assert body["param"] == "rag"
    body = _error(lambda: client.completions.create(model="tiny", prompt=[5000], max_tokens=2), 400)
    assert body["param"] == "prompt" and "0..299" in body["message"]
    body = _error(lambda: client.completions.create(model="tiny", prompt=[[]], max_tokens=2), 400)
    assert body["param"] == "prompt" and "empty list" in body["message"]

    body = _error(lambda: client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1020), 400)
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "maximum context length is 1024 tokens" in body["message"]
    body = _error(lambda: client.completions.create(model="tiny", prompt="the quick " * 600), 400)
    assert body["code"] == "context_length_exceeded" and body["param"] == "prompt"

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    broken = httpx.post(
        url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers=headers
    )
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(url + "/v1/completions", json={"model": "tiny"}, headers=headers)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    nowhere = httpx.post(url + "/v1/nothing", json={}, headers=headers)
    assert (
        nowhere.status_code == 404 and nowhere.json()["error"]["message"] == "Invalid URL (POST /v1/nothing)"
    )


def test_a_client_that_disconnects_frees_its_slot(server):
    url, _ = server
    batcher = _batcher(server)
    before = batcher.finished["cancelled"]
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 900, "stream": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
        next(line for line in lines if '"content"' in line and '"content": ""' not in line)  # decoding began
        assert batcher.stats()["running"] == 1
    _wait(lambda: batcher.finished["cancelled"] == before + 1 and batcher.stats()["running"] == 0)


def test_a_non_streaming_client_that_hangs_up_frees_its_slot(server):
    url, _ = server
    batcher = _batcher(server)
    before = batcher.finished["cancelled"]
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 900}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.3) as http:  # hangs up long before the end
        http.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    _wait(lambda: batcher.finished["cancelled"] == before + 1 and batcher.stats()["running"] == 0)


def test_32_concurrent_streaming_clients(server):
    url, _ = server
    batcher = _batcher(server)
    steps_before = batcher.steps

    async def one(client, i):
        chunks, text, reason = 0, "", None
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"question number {i}"}],
            max_tokens=12,
            temperature=0.8,
            seed=i,
            stream=True,
        )
        async for chunk in stream:
            chunks += 1
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        return chunks, text, reason

    async def all_clients():
        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    start = time.monotonic()
    results = asyncio.run(all_clients())
    elapsed = time.monotonic() - start
    assert len(results) == 32 and all(reason == "length" and chunks >= 2 for chunks, _, reason in results)
    assert elapsed < 60
    # 11 decode steps per reply (the first token comes from the prefill): together, not one after another
    assert batcher.steps - steps_before < 32 * 11 / 2
    assert batcher.stats()["running"] == 0 and batcher.stats()["waiting"] == 0


def test_rag_puts_retrieved_context_into_the_question(checkpoint):
    asked = []

    def retrieve(question):
        asked.append(question)
        return f"[1] notes.txt\nfacts about {question}"

    lm = load(checkpoint)
    app = create_app(lm, model_name="tiny", retriever=retrieve, max_batch=2)
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert httpx.get(url + "/health").json()["rag"] is True
        on = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4)
        off = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=4, extra_body={"rag": False}
        )
        with pytest.raises(openai.BadRequestError) as info:  # the context counts: the error says so
            client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1000)
    assert 'in the messages with the retrieved context ("rag": false leaves it out)' in str(info.value)
    assert asked == ["héllo there", "héllo there"]
    question = with_context("héllo there", retrieve("héllo there"))
    grounded = [MESSAGES[0], {"role": "user", "content": question}]
    assert on.usage.prompt_tokens == len(
        lm.tokenizer.encode(lm.render_prompt(grounded, chat=True, raw=False)[0])
    )
    assert on.choices[0].message.content == lm.generate(grounded, max_new_tokens=4)
    assert off.choices[0].message.content == lm.generate(MESSAGES, max_new_tokens=4)


def test_a_model_run_through_transformers_is_served(tmp_path, monkeypatch):
    """A GPT-Neo (which tinylm does not convert) is served with a cache per request: the same replies as the Python
    API, streamed or not, for clients at once."""
    from tests.unit.tiny_hf import save_tiny_gpt_neo
    from tinylm.generate.continuous import CachePerRequest

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    lm = load(save_tiny_gpt_neo(tmp_path / "neo"))
    app = create_app(lm, model_name="neo", max_batch=2)
    assert isinstance(app.state.server.batcher.layout, CachePerRequest)
    prompts = ["the cat sat on", "a dog", "the bird"]
    want = [lm.complete([p], raw=True, max_new_tokens=8)[0] for p in prompts]
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        many = client.completions.create(model="neo", prompt=prompts, max_tokens=8)  # 3 requests, 2 rows
        assert [c.text for c in many.choices] == [w.text for w in want]
        assert [c.finish_reason for c in many.choices] == [w.finish_reason for w in want]
        stream = client.completions.create(model="neo", prompt=prompts[0], max_tokens=8, stream=True)
        assert "".join(c.choices[0].text for c in stream) == want[0].text
    assert len({w.text for w in want}) == 3 and all(w.text for w in want)
