"""What a request must be before a route sees it: a body of bounded size holding one strict JSON object.

`BodyLimit` is a pure ASGI middleware (so streamed replies pass through untouched) that answers 413 in
OpenAI's shape when a body is larger than the server accepts: at once when Content-Length says so, else as
soon as a chunked body grows past the limit. `JSONRoute` hands the routes a request whose body is parsed
strictly: JSON Content-Type, UTF-8, no NaN or Infinity, bounded nesting, an object at the top; each failure
is a 400 saying what was wrong. This module knows nothing about models or about the OpenAI routes.
"""

from __future__ import annotations

import email.message
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinylm.serve.protocol import APIError

DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # 1 MiB: a context window of text many times over
MAX_DIGITS = 40  # of an integer in a body: seeds take 20, token ids fewer


class BodyLimit:
    """Read the whole body before the app does, refusing it with 413 once it passes `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (_content_length(scope) or 0) > self.max_bytes:
            await self._refuse(send)  # before reading a byte of it
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app hears it
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        pending = [message]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        error = APIError(
            413,
            f"request body: larger than the {self.max_bytes} bytes this server accepts "
            "(tinylm serve --max-request-bytes)",
            code="request_too_large",
        )
        body = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class JSONRequest(Request):
    """A request whose `json()` is `parse_body`: what FastAPI validates the route's body model against."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_body(await self.body())
            except ValueError as e:
                raise HTTPException(400, f"request body: {e}") from None
        return self._json


class JSONRoute(APIRoute):
    """A route that refuses a body sent as anything but JSON, and parses it with `parse_body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            request = JSONRequest(request.scope, request.receive)
            kind = request.headers.get("content-type", "")
            if self.body_field is not None:
                if not await request.body():
                    raise HTTPException(400, "request body: expected a JSON object, found an empty body")
                if not _is_json(kind):
                    found = f"Content-Type: {kind}" if kind else "no Content-Type"
                    raise HTTPException(
                        400, f"request body: expected Content-Type: application/json, found {found}"
                    )
            return await handler(request)

        return route


def _is_json(content_type: str) -> bool:
    header = email.message.Message()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`; ValueError saying what is wrong with it otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {_json_kind(value)}")
    return value


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"the number {text[:20]}... has {len(text)} digits, more than any field takes")
    return int(text)


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
