"""Tool calls and structured replies for chat completions, for any model, with or without tool syntax in
its chat template.

The way llama.cpp's "generic" tool format works: the tools are described in the system turn, and the
reply is held by a grammar (`tinylm.generate.grammar`) to one JSON object, `{"tool_calls": [{"name": ...,
"arguments": {...}}, ...]}` to call tools or, when the model may choose (`tool_choice: "auto"`),
`{"response": "..."}` to answer in words. So even a 135M-parameter model emits a call that parses and whose
arguments follow the tool's schema. `read_reply` turns that object back into OpenAI's `tool_calls` (ids made
here) or into plain content. Earlier turns are laid out the same way for the template: an assistant's calls
as the JSON it replied, a `tool` message as a user turn `{"tool_response": {"name": ..., "content": ...}}`.

`reply_schema` is the JSON schema of the reply a request asks for (`response_format`, or the tool-call
format), or None for free text. Every problem is an `APIError` 400 naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tinylm.generate.grammar import ANY_OBJECT
from tinylm.serve import protocol
from tinylm.serve.protocol import APIError
from tinylm.serve.schemas import ChatRequest, GenerationBody, Message, NamedToolChoice, Tool

NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ChatReply:
    """A finished reply as OpenAI sends it: content or tool calls, and why it ended."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None


def calls_tools(body: ChatRequest) -> bool:
    """Whether the reply is the tool-call JSON (tools given and `tool_choice` other than "none")."""
    return bool(body.tools) and body.tool_choice != "none"


def reply_schema(body: GenerationBody) -> tuple[Any, str] | None:
    """(the JSON schema the reply must follow, the request field it comes from), or None for free text."""
    if isinstance(body, ChatRequest):
        _check_tool_choice(body)
        if calls_tools(body):
            if body.response_format is not None and body.response_format.type != "text":
                raise APIError(
                    400,
                    "response_format with tools is not supported by this server: the reply is either a tool "
                    'call or a {"response": ...} object; leave response_format out, or set tool_choice "none"',
                    param="response_format",
                    code="unsupported_parameter",
                )
            return _tool_call_schema(body), "tools"
    form = body.response_format
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return ANY_OBJECT, "response_format"
    schema = form.json_schema.schema_ if form.json_schema is not None else None
    return (ANY_OBJECT if schema is None else schema), "response_format"


def _check_tool_choice(body: ChatRequest) -> None:
    choice = body.tool_choice
    if choice is None or choice == "none":
        return
    if not body.tools:
        raise APIError(400, "tool_choice needs tools: this request has none", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        names = [t.function.name for t in body.tools]
        if choice.function.name not in names:
            raise APIError(
                400,
                f"tool_choice names the function `{choice.function.name}`, which is not among the tools: "
                f"{', '.join(names)}",
                param="tool_choice",
            )


def _tool_call_schema(body: ChatRequest) -> dict[str, Any]:
    tools = body.tools or []
    if isinstance(body.tool_choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == body.tool_choice.function.name]
    one = [_call_schema(t) for t in tools]
    calls: dict[str, Any] = {"type": "array", "items": one[0] if len(one) == 1 else {"anyOf": one}}
    calls["minItems"] = 1
    if body.parallel_tool_calls is False:
        calls["maxItems"] = 1
    call = _object(tool_calls=calls)
    if body.tool_choice in (None, "auto"):
        return {"anyOf": [call, _object(response={"type": "string"})]}
    return call


def _call_schema(tool: Tool) -> dict[str, Any]:
    f = tool.function
    arguments = f.parameters or NO_ARGUMENTS
    return _object(name={"const": f.name}, arguments=arguments if f.strict is False else closed(arguments))


def closed(schema: Any) -> Any:
    """`schema` with every object that does not say otherwise closed to the properties it lists, as OpenAI's
    strict mode wants them: a call holds the declared arguments only, not whatever a small model adds
    (`"strict": false` on the function keeps the schema as given)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k in _SUBSCHEMAS else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in schema[key].items()}
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and "additionalProperties" not in schema and "patternProperties" not in schema:
        out["additionalProperties"] = False
    return out


_SUBSCHEMAS = {"items", "prefixItems", "anyOf", "oneOf", "allOf", "not", "additionalProperties"}


def _object(**properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# -- the prompt ------------------------------------------------------------------------------------------
def template_messages(body: ChatRequest) -> list[dict[str, str]]:
    """The request's messages for a chat template: calls and results laid out as JSON, the tools described
    in the system turn when the reply may call them."""
    names: dict[str, str] = {}  # call id -> function name, from the assistant turns so far
    out = []
    for i, m in enumerate(body.messages):
        if m.role == "assistant" and m.tool_calls:
            out.append({"role": "assistant", "content": _calls_text(m, i, names)})
        elif m.role == "tool":
            if m.tool_call_id not in names:
                raise APIError(
                    400,
                    f"messages[{i}]: tool_call_id `{m.tool_call_id}` answers no tool call of an earlier "
                    "assistant message",
                    param=f"messages[{i}].tool_call_id",
                )
            response = {"name": names[m.tool_call_id], "content": m.text}
            out.append(
                {"role": "user", "content": json.dumps({"tool_response": response}, ensure_ascii=False)}
            )
        else:
            out.append(m.as_template_message())
    if calls_tools(body):
        out = _with_tools_described(out, body)
    return out


def _calls_text(m: Message, i: int, names: dict[str, str]) -> str:
    calls = []
    for j, call in enumerate(m.tool_calls or []):
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            raise APIError(
                400,
                f"messages[{i}].tool_calls[{j}].function.arguments: expected JSON text, found "
                f"{call.function.arguments[:80]!r}",
                param=f"messages[{i}].tool_calls[{j}].function.arguments",
            ) from None
        names[call.id] = call.function.name
        calls.append({"name": call.function.name, "arguments": arguments})
    return json.dumps({"tool_calls": calls}, ensure_ascii=False)


def _with_tools_described(messages: list[dict[str, str]], body: ChatRequest) -> list[dict[str, str]]:
    tools = [
        {
            "name": t.function.name,
            "description": t.function.description or "",
            "parameters": t.function.parameters,
        }
        for t in body.tools or []
    ]
    lines = [
        "You can call these tools:",
        json.dumps(tools, ensure_ascii=False),
        'To call tools, reply with JSON: {"tool_calls": [{"name": "<tool name>", "arguments": {...}}]}.',
        'A tool\'s result comes back as {"tool_response": {"name": ..., "content": ...}}.',
    ]
    if body.tool_choice in (None, "auto"):
        lines.append('To answer without a tool, reply with JSON: {"response": "<your answer>"}.')
    described = "\n".join(lines)
    if messages and messages[0]["role"] == "system":
        first = messages[0]["content"]
        return [{"role": "system", "content": f"{first}\n\n{described}"}, *messages[1:]]
    return [{"role": "system", "content": described}, *messages]


# -- the reply -------------------------------------------------------------------------------------------
def read_reply(text: str, finish_reason: str | None) -> ChatReply:
    """A tool-call-format reply as OpenAI's message: calls (finish_reason "tool_calls") or the response's
    words. A reply the token budget cut off is not JSON: it comes back as it is, with its "length"."""
    try:
        value = json.loads(text)
    except ValueError:
        return ChatReply(text, None, finish_reason)
    if "tool_calls" in value:
        calls = [
            {
                "id": protocol.new_id("call"),
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(call["arguments"], ensure_ascii=False),
                },
            }
            for call in value["tool_calls"]
        ]
        return ChatReply(None, calls, "tool_calls")
    return ChatReply(value["response"], None, finish_reason)
