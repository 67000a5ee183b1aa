"""OpenAI's wire format: the error body, ids, usage, logprobs in both styles, server-sent events.

Plain functions building plain dicts, so the shapes can be read in one place and tested without a server.
This module knows nothing about models, tokenizers or HTTP frameworks.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

UNLIKELY = -9999.0  # OpenAI's logprob for a token outside the distribution (JSON has no -inf)
DONE = "data: [DONE]\n\n"


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as text, its log-probability, and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(
    kind: str, model: str, choices: list[dict[str, Any]], prompt: int, completion: int
) -> dict[str, Any]:
    """A whole (not streamed) reply: kind "text_completion" or "chat.completion", with its id and usage."""
    return {
        "id": new_id("cmpl" if kind == "text_completion" else "chatcmpl"),
        "object": kind,
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(prompt, completion),
    }


def finite(logprob: float) -> float:
    return max(logprob, UNLIKELY)


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape; `offset` is the text offset of the first token."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [finite(e.logprob) for e in entries],
        "top_logprobs": [{t: finite(lp) for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": finite(logprob), "bytes": list(token.encode())}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries
        ],
        "refusal": None,
    }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
