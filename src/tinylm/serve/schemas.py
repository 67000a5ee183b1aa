"""The request bodies of the OpenAI-compatible endpoints, validated by pydantic.

Fields follow OpenAI's API with its ranges. Unknown fields are refused (a typo such as `temprature` is an
error, not a silent default); a few that only label a request (`user`, `metadata`, ...) are accepted and
ignored. OpenAI features tinylm does not have (`echo`, `logit_bias`, `functions`, ...) are refused by
`unsupported()` with the field named. `response_format` (structured output) and `tools`/`tool_choice` with
`tool` messages follow OpenAI's shapes; what they mean for the prompt and the reply is `tinylm.serve.tools`. Extensions: `top_k`, `min_p`, `repetition_penalty` for sampling, `rag`
for chat (on a server started with `--rag`), `pooling` for embeddings. The fields that are generation options
are built from `tinylm.generate.options` (`OPENAI_NAMES`), within OpenAI's ranges (`OPENAI_RANGES`). This
module only describes requests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tinylm.generate.options import OPTIONS, pydantic_field
from tinylm.serve.protocol import APIError

OPENAI_NAMES = {  # generation option -> its field in a request body
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "stop": "stop",
    "seed": "seed",
}
OPENAI_RANGES = {  # where OpenAI's range is not the option's
    "temperature": {"le": 2},
    "frequency_penalty": {"ge": -2, "le": 2},
    "presence_penalty": {"ge": -2, "le": 2},
    "seed": {"ge": -(2**63), "le": 2**63 - 1},  # choice j: seed + j, in torch's -2**63..2**64-1
}
PLANNED = ("max_new_tokens", "seed")
"""Options the server's plan applies itself (the reply budget, seed + j for choice j), not `LM`'s options."""


class _Strict(BaseModel):
    """Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class _Body(_Strict):
    model: str
    # accepted and ignored: they label a request, they do not change the reply
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


_OptionFields = create_model(  # unset (None): the checkpoint's default
    "_OptionFields",
    __base__=_Body,
    **{
        OPENAI_NAMES[name]: pydantic_field(name, default=None, **OPENAI_RANGES.get(name, {}))
        for name in OPENAI_NAMES
        if name != "stop"  # OpenAI's shape, below
    },
)


NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


class JSONSchemaFormat(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # `schema` read as `schema_`

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON object
    strict: bool | None = None


class ResponseFormat(_Strict):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is given with, and only with, type "json_schema"')
        return self


class GenerationBody(_OptionFields):
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None and len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, found {len(stops)}")
        return stops

    def sampling_options(self) -> dict[str, Any]:
        """The options `tinylm.api.LM` resolves, for the fields that were set (the rest keep their defaults)."""
        given = {name: getattr(self, OPENAI_NAMES[name]) for name in OPENAI_NAMES if name not in PLANNED}
        return {name: value for name, value in given.items() if value is not None}

    def unsupported(self) -> None:
        if self.logit_bias:
            raise _unsupported("logit_bias")


class CompletionRequest(GenerationBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise _unsupported("echo")
        if self.suffix:
            raise _unsupported("suffix")
        if self.best_of not in (None, self.n):
            raise _unsupported("best_of", "best_of other than n")


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    """A call an assistant message made, sent back in the next request."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments; None: no arguments
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, validate_default=True)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[TextPart] | None, info: ValidationInfo) -> str | list[TextPart] | None:
        role = info.data.get("role")
        if v is None and role not in (None, "assistant"):  # only an assistant turn may be empty (tool calls)
            raise ValueError(f"a {role} message needs content (a string or a list of text parts)")
        return v

    @model_validator(mode="after")
    def _tool_fields(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id, the id of the call it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError(f"tool_call_id belongs to tool messages, not to a {self.role} message")
        if self.role != "assistant" and self.tool_calls is not None:
            raise ValueError(f"tool_calls belong to assistant messages, not to a {self.role} message")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    @property
    def text(self) -> str:
        """The content as one string (text parts joined; none: empty)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])

    def as_template_message(self) -> dict[str, str]:
        """{"role", "content"} for a chat template: text parts joined, `developer` read as `system`."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text}


class ChatRequest(GenerationBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, **OPTIONS["max_new_tokens"].rule.bounds())  # max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    rag: bool | None = None

    def unsupported(self) -> None:
        super().unsupported()
        for name in ("functions", "function_call"):
            if getattr(self, name):
                raise _unsupported(name, f"{name} (deprecated by OpenAI: use tools)")
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")

    @property
    def reply_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    pooling: Literal["mean", "last"] = "mean"


def _unsupported(param: str, what: str | None = None) -> APIError:
    return APIError(
        400, f"{what or param} is not supported by this server", param=param, code="unsupported_parameter"
    )
