"""Structured output and tool calls through the official `openai` client against a real server on loopback
(a tiny random model: only the grammar makes its replies well formed), and the pure parts of
`tinylm.serve.toolcalls`."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tinylm import load
from tinylm.serve import create_app, running
from tinylm.serve.schemas import ChatRequest
from tinylm.serve.toolcalls import closed, read_reply, reply_schema, template_messages

PERSON = {
    "type": "object",
    "properties": {
        "size": {"enum": ["S", "M", "L"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "dims": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 5}, "maxItems": 2},
    },
    "required": ["size", "age", "ok", "dims"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time"}}
ASK = [{"role": "user", "content": "the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(checkpoint):
    app = create_app(load(checkpoint), model_name="tiny", max_batch=2)
    with running(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _error(call, status=400) -> dict:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    assert info.value.status_code == status
    return info.value.body


def test_response_format_holds_chat_and_completions_to_the_schema(client):
    form = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    chat = client.chat.completions.create(
        model="tiny", messages=ASK, response_format=form, max_tokens=200, n=2, seed=3, temperature=1
    )
    for choice in chat.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    done = client.completions.create(
        model="tiny", prompt="the fox", max_tokens=200, extra_body={"response_format": form}
    )
    jsonschema.validate(json.loads(done.choices[0].text), PERSON)
    stream = client.chat.completions.create(
        model="tiny", messages=ASK, response_format=form, max_tokens=200, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == json.loads(
        client.chat.completions.create(model="tiny", messages=ASK, response_format=form, max_tokens=200)
        .choices[0]
        .message.content
    )


def test_without_response_format_the_model_writes_no_json(client):
    reply = (
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=30).choices[0].message.content
    )
    with pytest.raises(ValueError):
        json.loads(reply)


def test_a_tool_round_trip_through_the_openai_client(client):
    first = client.chat.completions.create(
        model="tiny",
        messages=ASK,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=100,
    ).choices[0]
    assert first.finish_reason == "tool_calls" and first.message.content is None
    [call] = first.message.tool_calls
    assert call.type == "function" and call.function.name in ("get_weather", "now")
    arguments = json.loads(call.function.arguments)
    schema = (
        WEATHER["function"]["parameters"] if call.function.name == "get_weather" else {"maxProperties": 0}
    )
    jsonschema.validate(arguments, schema)
    messages = [
        *ASK,
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    final = client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER, CLOCK], tool_choice="none", max_tokens=8
    )
    assert final.choices[0].finish_reason == "length" and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


def test_auto_replies_either_call_or_answer_and_a_named_choice_calls_it(client):
    auto = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=150, n=3, seed=1, temperature=1
    )
    for choice in auto.choices:
        if choice.finish_reason == "tool_calls":
            assert all(c.function.name == "get_weather" for c in choice.message.tool_calls)
        else:  # the {"response": ...} object read back into words
            assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    named = {"type": "function", "function": {"name": "now"}}
    reply = client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER, CLOCK], tool_choice=named, max_tokens=100
    )
    calls = reply.choices[0].message.tool_calls
    assert (
        calls
        and {c.function.name for c in calls} == {"now"}
        and all(c.function.arguments == "{}" for c in calls)
    )


def test_tool_calls_stream_as_openai_streams_them(client):
    kwargs = {
        "model": "tiny",
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 100,
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
    streamed: dict[int, str] = {}
    for d in deltas:
        streamed[d.index] = streamed.get(d.index, "") + (d.function.arguments or "")
    assert [streamed[i] for i in sorted(streamed)] == [c.function.arguments for c in whole]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "strnig"}},
                }
            },
            "response_format",
            "strnig",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format", "json_object"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "nope",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools", "name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "pattern"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strnig"}}}]},
            "tools",
            "strnig",
        ),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "tools"),
    ],
)
def test_bad_structured_requests_are_400_in_openai_shape(client, extra, param, needle):
    body = _error(
        lambda: client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, extra_body=extra)
    )
    assert body["type"] == "invalid_request_error" and body["param"] == param and needle in body["message"]


@pytest.mark.parametrize(
    "messages, param, needle",
    [
        ([*ASK, {"role": "tool", "content": "21"}], "messages", "tool_call_id"),
        (
            [*ASK, {"role": "tool", "content": "21", "tool_call_id": "call-x"}],
            "messages[1].tool_call_id",
            "call-x",
        ),
        (
            [
                *ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                    ],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
            "JSON",
        ),
        ([*ASK, {"role": "assistant"}], "messages", "content or tool_calls"),
    ],
)
def test_bad_tool_messages_are_400_in_openai_shape(client, messages, param, needle):
    body = _error(lambda: client.chat.completions.create(model="tiny", messages=messages, max_tokens=4))
    assert body["param"] == param and needle in body["message"]


def test_calls_and_results_are_laid_out_for_the_template():
    body = ChatRequest(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            *ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        ],
        tools=[WEATHER],
    )
    system, user, assistant, result = template_messages(body)
    assert (
        system["content"].startswith("be brief\n\nYou can call these tools:")
        and '"response"' in system["content"]
    )
    assert user == ASK[0]
    assert json.loads(assistant["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    }
    assert result["role"] == "user"
    assert json.loads(result["content"]) == {"tool_response": {"name": "get_weather", "content": "cold"}}
    none = ChatRequest(model="m", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert template_messages(none) == ASK and reply_schema(none) is None


def test_tool_arguments_are_closed_unless_the_function_is_not_strict():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {}},
            "b": {"type": "array", "items": {"properties": {}}},
        },
    }
    shut = closed(schema)
    assert shut["additionalProperties"] is False and shut["properties"]["a"]["additionalProperties"] is False
    assert shut["properties"]["b"]["items"]["additionalProperties"] is False
    assert closed({"type": "object", "additionalProperties": True}) == {
        "type": "object",
        "additionalProperties": True,
    }
    loose = ChatRequest(
        model="m",
        messages=ASK,
        tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": False}}],
        tool_choice="required",
    )
    arguments = reply_schema(loose)[0]["properties"]["tool_calls"]["items"]["properties"]["arguments"]
    assert "additionalProperties" not in arguments


def test_a_reply_cut_by_the_budget_comes_back_as_text():
    assert (
        read_reply('{"tool_calls": [{"name": "f", "argu', "length").content
        == '{"tool_calls": [{"name": "f", "argu'
    )
    words = read_reply('{"response": "sunny"}', "stop")
    assert words.content == "sunny" and words.tool_calls is None and words.finish_reason == "stop"
    calls = read_reply('{"tool_calls": [{"name": "f", "arguments": {"x": 1}}]}', "stop")
    assert calls.finish_reason == "tool_calls" and calls.tool_calls[0]["function"] == {
        "name": "f",
        "arguments": '{"x": 1}',
    }
