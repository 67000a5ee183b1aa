"""The chat page in headless Chromium: a typed message streams back a reply in several chunks, the
conversation and the settings go with the next request, RAG can be switched off, and the page loads
nothing from beyond the server."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tinylm import load
from tinylm.serve import create_app, running


@pytest.fixture
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"needs a Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_page_streams_replies_and_keeps_the_conversation(checkpoint, browser):
    asked = []
    lm = load(checkpoint)
    app = create_app(lm, model_name="tiny", retriever=lambda q: asked.append(q) or "", max_batch=2)
    with running(app) as url:
        page = browser.new_page()
        sent, elsewhere = [], []
        page.on("request", lambda r: (sent if r.url.endswith("/chat/completions") else elsewhere).append(r))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny')")
        assert page.is_visible("#rag")  # the server has a retriever
        page.fill("#system", "be brief")
        page.eval_on_selector("#temperature", "e => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
        page.fill("#max-tokens", "24")

        page.fill("#input", "héllo there")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant[data-done='1']", timeout=30_000)
        first = page.locator(".msg.assistant").nth(0)
        reply = first.locator(".text").text_content()
        assert reply and int(first.get_attribute("data-chunks")) >= 2  # streamed, not delivered at once
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo there"}]
        assert reply == lm.generate(
            messages, max_new_tokens=24
        )  # greedy, and "" retrieved: the plain question

        page.uncheck("#rag")
        page.fill("#input", "and then?")
        page.click("#send")
        page.wait_for_selector(".msg.assistant:nth-of-type(4)[data-done='1']", timeout=30_000)
        second = page.locator(".msg.assistant").nth(1)
        assert second.locator(".text").text_content() and int(second.get_attribute("data-chunks")) >= 2
        body = json.loads(sent[1].post_data)
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
        assert body["messages"][2]["content"] == reply
        assert body["temperature"] == 0 and body["max_tokens"] == 24 and body["rag"] is False
        assert asked == ["héllo there"]  # retrieval ran for the first question only
        assert all(r.url.startswith(url) for r in sent + elsewhere)  # nothing from beyond the server
        assert page.locator(".msg.error").count() == 0
