"""The OpenAI-compatible HTTP server: FastAPI routes over one `LM` and its continuous `Batcher`.

Routes: GET / (the chat page), GET /health, GET /v1/models, POST /v1/completions, /v1/chat/completions and
/v1/embeddings. The server sees text and chat messages: it lays prompts out with the model's templates
(`tinylm.api.LM`), checks them against the context window and hands token ids to the batcher, which alone
runs the model. Completions take the prompt as it is (no prompt template), as OpenAI's do; chat renders the
model's chat template. Unset options take the checkpoint's defaults (greedy unless it says otherwise).
Errors are answered in OpenAI's shape, and a request that fails validation gets 400, as OpenAI answers:
500 means a fault of the server, never of the request. Tokenizing and rendering prompts runs in a worker
thread, so a large prompt never holds up the event loop (nor /health).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tinylm.api import LM
from tinylm.errors import TinylmError
from tinylm.generate.continuous import Batcher, Request
from tinylm.serve import protocol, toolcalls
from tinylm.serve.guard import DEFAULT_MAX_REQUEST_BYTES, BodyLimit, JSONRoute
from tinylm.serve.protocol import APIError
from tinylm.serve.replies import Reply, Update, run_replies
from tinylm.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, GenerationBody

Retriever = Callable[
    [str], str
]  # question -> retrieved context (numbered sources), as `tinylm.rag.retriever`
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


@dataclass
class Plan:
    """The jobs of one request: one per (prompt, choice), with the replies that read them."""

    requests: list[Request]
    replies: list[Reply]
    prompt_tokens: int
    calls_tools: bool = False  # the replies are tool-call JSON, read by `toolcalls.read_reply`

    @property
    def completion_tokens(self) -> int:
        return sum(r.tokens for r in self.replies)


class Server:
    """What the routes share: the model, its batcher, the served name, the optional retriever."""

    def __init__(self, lm: LM, batcher: Batcher, model_name: str, retriever: Retriever | None):
        self.lm, self.batcher, self.model_name, self.retriever = lm, batcher, model_name, retriever
        self.created = protocol.now()

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{self.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def plan(
        self,
        prompts: list[list[int]],
        body: GenerationBody,
        *,
        budget: int | None,
        default_budget: int | None,
        extra_stops: list[str],
        top_logprobs: int | None,
        param: str,
        label: str | None = None,
    ) -> Plan:
        """Check every prompt against the context window and make its `n` jobs (seed + j for choice j),
        under the grammar of the reply's JSON schema when it has one. CPU work (a schema compiles): run it
        in a thread."""
        try:
            opts, params = self.lm.resolve_options(body.sampling_options())
        except TinylmError as e:
            raise APIError(400, str(e)) from None
        schema = toolcalls.reply_schema(body)
        grammar = None
        if schema is not None:
            try:
                grammar = self.lm.grammar(schema[0], opts)
            except TinylmError as e:
                raise APIError(400, f"{schema[1]}: {e}", param=schema[1]) from None
        stop_ids = self.lm.stop_token_ids(opts)
        window = self.batcher.max_len
        requests, replies = [], []
        for ids in prompts:
            wanted = (
                budget if budget is not None else max(1, min(default_budget or window, window - len(ids)))
            )
            if len(ids) + wanted > window:
                raise APIError(
                    400,
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{len(ids) + wanted} tokens ({len(ids)} in the {label or param}, {wanted} for the "
                    f"completion). Please reduce the length of the {param} or the completion.",
                    param=param,
                    code="context_length_exceeded",
                )
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                requests.append(
                    Request(tuple(ids), wanted, params, tuple(stop_ids), seed, top_logprobs or 0, grammar)
                )
                replies.append(
                    Reply(
                        len(replies),
                        self.lm.tokenizer,
                        stop=[*opts.stop, *extra_stops],
                        stop_ids=stop_ids,
                        logprobs=top_logprobs is not None,
                    )
                )
        tools = schema is not None and schema[1] == "tools"
        return Plan(requests, replies, sum(len(p) for p in prompts), calls_tools=tools)

    def updates(self, plan: Plan) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Update]]:
        return contextlib.aclosing(run_replies(self.batcher, plan.requests, plan.replies))

    async def finish(self, plan: Plan, http: HTTPRequest) -> None:
        """Run a plan to its end (non-streaming). A client that hangs up first cancels its jobs, as a
        streaming one does: the server checks every DISCONNECT_POLL seconds while the jobs run."""

        async def drain() -> None:
            async with self.updates(plan) as updates:
                async for _ in updates:
                    pass

        task = asyncio.ensure_future(drain())
        try:
            while not (await asyncio.wait({task}, timeout=DISCONNECT_POLL))[0]:
                if await http.is_disconnected():
                    task.cancel()  # closing the updates cancels every job of the plan
                    break
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- prompts ------------------------------------------------------------------------------------
    def completion_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """The prompts as token ids, each checked against the vocabulary (CPU work: run it in a thread)."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt: expected a string or a non-empty list", param="prompt")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]  # one prompt given as token ids
        out = []
        for p in prompt:
            ids = self.lm.encode(p) if isinstance(p, str) else list(p)
            bad = [i for i in ids if not 0 <= i < self.lm.tokenizer.vocab_size]
            if not ids:
                raise APIError(
                    400, "prompt: expected at least one token id, found an empty list", param="prompt"
                )
            if bad:
                top = self.lm.tokenizer.vocab_size - 1
                shown = ", ".join(str(i)[:20] for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
                raise APIError(400, f"prompt: token ids must be in 0..{top}, found {shown}", param="prompt")
            out.append(ids)
        return out

    async def chat_prompt(self, body: ChatRequest) -> tuple[list[int], list[str], str]:
        """(prompt ids, stop strings of the chat template, what the ids hold); with RAG, the last user
        message gets the retrieved context."""
        messages = toolcalls.template_messages(body)
        if body.rag and self.retriever is None:
            raise APIError(400, "rag: this server was started without --rag", param="rag")
        shift = len(messages) - len(body.messages)  # a system turn added to describe the tools
        users = [i + shift for i, m in enumerate(body.messages) if m.role == "user"]
        label = "messages"
        if self.retriever is not None and body.rag is not False and users:
            from tinylm.chat.prompts import with_context

            question = messages[users[-1]]["content"]
            context = await asyncio.to_thread(self.retriever, question)
            messages[users[-1]] = {"role": "user", "content": with_context(question, context)}
            label = 'messages with the retrieved context ("rag": false leaves it out)'

        ids, stops = await asyncio.to_thread(self._render, messages)
        return ids, stops, label

    def _render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        try:
            text, stops = self.lm.render_prompt(messages, chat=True, raw=False)
        except TinylmError as e:
            raise APIError(400, str(e), param="messages") from None
        return self.lm.encode(text), stops


def create_app(
    lm: LM,
    *,
    model_name: str,
    api_key: str | None = None,
    retriever: Retriever | None = None,
    max_batch: int = 8,
    max_len: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    prefix_cache_tokens: int = 0,
) -> FastAPI:
    """The app; its batcher (max_batch rows over a max_len cache, a prefix cache of `prefix_cache_tokens`)
    runs while the app runs (lifespan).
    With `api_key`, /v1 wants `Authorization: Bearer KEY`; a body over `max_request_bytes` is answered 413."""
    problems = [p for p in (api_key_problem(api_key), request_bytes_problem(max_request_bytes)) if p]
    if problems:
        raise TinylmError("\n".join(problems))
    batcher = Batcher(lm.model, max_batch=max_batch, max_len=max_len, prefix_cache_tokens=prefix_cache_tokens)
    server = Server(lm, batcher, model_name, retriever)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with server.batcher:
            yield

    app = FastAPI(title="tinylm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    _error_handlers(app)
    _page_routes(app, server)
    app.include_router(_v1_routes(server, api_key))
    return app


def _page_routes(app: FastAPI, server: Server) -> None:
    """GET / (the chat page) and GET /health, open to everyone."""
    page = resources.files("tinylm.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        b = server.batcher
        stats = {"context_length": b.max_len, "max_batch": b.max_batch, **b.stats()}
        return {"status": "ok", "model": server.model_name, "rag": server.retriever is not None, **stats}


def _v1_routes(server: Server, api_key: str | None) -> APIRouter:
    """The OpenAI-compatible routes under /v1, behind the API key when there is one."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_authorize(api_key))], route_class=JSONRoute)

    @v1.get("/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server)]}

    @v1.get("/models/{name:path}")
    def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return _model_card(server)

    @v1.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, http: HTTPRequest) -> dict[str, Any] | StreamingResponse:
        return await _completions(server, body, http)

    @v1.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, http: HTTPRequest) -> dict[str, Any] | StreamingResponse:
        return await _chat_completions(server, body, http)

    @v1.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        return await _embeddings(server, body)

    return v1


async def _completions(
    server: Server, body: CompletionRequest, http: HTTPRequest
) -> dict[str, Any] | StreamingResponse:
    server.check_model(body.model)
    body.unsupported()
    prompts = await asyncio.to_thread(server.completion_prompts, body.prompt)
    plan = await asyncio.to_thread(
        server.plan,
        prompts,
        body,
        budget=body.max_tokens,
        default_budget=16,  # OpenAI's default for completions
        extra_stops=[],
        top_logprobs=body.logprobs,
        param="prompt",
    )
    if body.stream:
        return StreamingResponse(
            _completion_events(server, plan, body), media_type="text/event-stream", headers=SSE_HEADERS
        )
    await server.finish(plan, http)
    choices = [
        {
            "index": r.index,
            "text": r.text,
            "logprobs": protocol.completion_logprobs(r.logprobs, 0) if r.want_logprobs else None,
            "finish_reason": r.finish_reason,
        }
        for r in plan.replies
    ]
    kind = "text_completion"
    return protocol.response(kind, server.model_name, choices, plan.prompt_tokens, plan.completion_tokens)


async def _chat_completions(
    server: Server, body: ChatRequest, http: HTTPRequest
) -> dict[str, Any] | StreamingResponse:
    server.check_model(body.model)
    body.unsupported()
    ids, stops, label = await server.chat_prompt(body)
    plan = await asyncio.to_thread(
        server.plan,
        [ids],
        body,
        budget=body.reply_budget,
        default_budget=None,  # OpenAI's chat default: the rest of the context window
        extra_stops=stops,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        param="messages",
        label=label,
    )
    if body.stream:
        return StreamingResponse(
            _chat_events(server, plan, body), media_type="text/event-stream", headers=SSE_HEADERS
        )
    await server.finish(plan, http)
    choices = []
    for r in plan.replies:
        reply = _chat_reply(plan, r)
        message = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        choices.append(
            {
                "index": r.index,
                "message": message,
                "logprobs": protocol.chat_logprobs(r.logprobs) if r.want_logprobs else None,
                "finish_reason": reply.finish_reason,
            }
        )
    kind = "chat.completion"
    return protocol.response(kind, server.model_name, choices, plan.prompt_tokens, plan.completion_tokens)


async def _embeddings(server: Server, body: EmbeddingRequest) -> dict[str, Any]:
    server.check_model(body.model)
    lm = server.lm
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError(400, "input: expected a string or a non-empty list of strings", param="input")
    dim = lm.config.n_embd
    if body.dimensions not in (None, dim):
        raise APIError(400, f"dimensions: this model's embeddings have {dim}", param="dimensions")
    embed = functools.partial(lm.embed, texts, pooling=body.pooling)
    vectors = await asyncio.wrap_future(server.batcher.call(embed))  # (B, n_embd)

    def count() -> int:  # CPU work: in a thread, off the event loop
        return sum(min(len(lm.encode(t)), lm.config.block_size) for t in texts)

    tokens = await asyncio.to_thread(count)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors.numpy())
        ],
        "model": server.model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _completion_events(server: Server, plan: Plan, body: CompletionRequest) -> AsyncIterator[str]:
    cid, created = protocol.new_id("cmpl"), protocol.now()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        head = {"id": cid, "object": "text_completion", "created": created, "model": server.model_name}
        return protocol.sse({**head, "choices": choices, **extra})

    try:
        async with server.updates(plan) as updates:
            async for u in updates:
                logprobs = (
                    protocol.completion_logprobs(u.logprobs, u.offset) if body.logprobs is not None else None
                )
                choice = {
                    "index": u.index,
                    "text": u.text,
                    "logprobs": logprobs,
                    "finish_reason": u.finish_reason,
                }
                yield chunk([choice], **({"usage": None} if include_usage else {}))
        if include_usage:
            yield chunk([], usage=protocol.usage(plan.prompt_tokens, plan.completion_tokens))
    except APIError as e:
        yield protocol.sse(e.body())
    yield protocol.DONE


async def _chat_events(server: Server, plan: Plan, body: ChatRequest) -> AsyncIterator[str]:
    cid, created = protocol.new_id("chatcmpl"), protocol.now()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}

    def chunk(choices: list[dict[str, Any]], **more: Any) -> str:
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": server.model_name}
        return protocol.sse({**head, "choices": choices, **more})

    try:
        for r in plan.replies:
            role = {"role": "assistant", "content": ""}
            yield chunk([{"index": r.index, "delta": role, "logprobs": None, "finish_reason": None}], **extra)
        async with server.updates(plan) as updates:
            async for u in updates:
                logprobs = protocol.chat_logprobs(u.logprobs) if body.logprobs else None
                if plan.calls_tools:  # the reply is JSON to read whole: sent once it has ended
                    if u.finish_reason is not None:
                        for choice in _whole_reply_choices(plan, u.index):
                            yield chunk([choice], **extra)
                    continue
                choice = {
                    "index": u.index,
                    "delta": {"content": u.text} if u.text else {},
                    "logprobs": logprobs,
                    "finish_reason": u.finish_reason,
                }
                yield chunk([choice], **extra)
        if include_usage:
            yield chunk([], usage=protocol.usage(plan.prompt_tokens, plan.completion_tokens))
    except APIError as e:
        yield protocol.sse(e.body())
    yield protocol.DONE


def _chat_reply(plan: Plan, reply: Reply) -> toolcalls.ChatReply:
    """A finished reply as OpenAI's message holds it: tool-call JSON read into calls or words."""
    if plan.calls_tools:
        return toolcalls.read_reply(reply.text, reply.finish_reason)
    return toolcalls.ChatReply(reply.text, None, reply.finish_reason)


def _whole_reply_choices(plan: Plan, index: int) -> list[dict[str, Any]]:
    """The stream choices of a finished tool-call-format reply: its deltas, then its finish reason."""
    reply = _chat_reply(plan, plan.replies[index])
    deltas = [*_reply_deltas(reply), {}]
    ends = [None] * (len(deltas) - 1) + [reply.finish_reason]
    return [{"index": index, "delta": d, "logprobs": None, "finish_reason": f} for d, f in zip(deltas, ends)]


def _reply_deltas(reply: toolcalls.ChatReply) -> list[dict[str, Any]]:
    """A whole reply as stream deltas, the way OpenAI streams one: each call's id and name first, then
    its arguments; or the content."""
    if not reply.tool_calls:
        return [{"content": reply.content}] if reply.content else []
    deltas = []
    for i, call in enumerate(reply.tool_calls):
        head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"tool_calls": [{"index": i, **head}]})
        deltas.append(
            {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}
        )
    return deltas


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "tinylm"}


def _encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def api_key_problem(api_key: str | None) -> str | None:
    """Why `api_key` cannot be the server's key, if it cannot: a blank key must not mean "no key"."""
    if api_key is not None and not api_key.strip():
        return (
            "--api-key: an empty key would disable authentication; give a non-empty key or leave the option "
            "out (and $TINYLM_API_KEY unset)"
        )
    return None


def request_bytes_problem(max_request_bytes: int) -> str | None:
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
        return f"--max-request-bytes: expected a number of bytes >= 1, found {max_request_bytes!r}"
    return None


def _authorize(api_key: str | None) -> Callable[[str | None], None]:
    """A dependency that checks `Authorization: Bearer KEY` when the server has a key."""

    def check(authorization: str | None = Header(None)) -> None:
        if api_key is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                code="invalid_api_key",
            )
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; request validation answers 400 (OpenAI's code), not FastAPI's 422."""

    @app.exception_handler(APIError)
    async def api_error(request: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        problems, params = [], []
        for err in e.errors():
            loc = [str(part) for part in err.get("loc", ())[1:]]  # drop "body"
            field = loc[0] if loc else None
            if field in params:  # a union reports each member's failure: keep the first
                continue
            params.append(field)
            where = ".".join(loc) if loc else "request body"
            problems.append(f"{where}: {err.get('msg', 'invalid').removeprefix('Value error, ')}")
        error = APIError(400, "; ".join(problems), param=params[0] if params else None)
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: HTTPRequest, e: HTTPException) -> JSONResponse:
        message = (
            f"Invalid URL ({request.method} {request.url.path})" if e.status_code == 404 else str(e.detail)
        )
        return JSONResponse(APIError(e.status_code, message).body(), status_code=e.status_code)

    @app.exception_handler(TinylmError)
    async def user_error(request: HTTPRequest, e: TinylmError) -> JSONResponse:
        return JSONResponse(APIError(400, str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: HTTPRequest, e: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(error.body(), status_code=500)
