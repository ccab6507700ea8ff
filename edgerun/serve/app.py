"""The Starlette app: OpenAI's /v1/models, /v1/completions and /v1/chat/completions (with and
without server-sent events), /health and /metrics, over engine.Slot."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgerun.runtime.model import Chunk
from edgerun.serve import reqlog
from edgerun.serve.engine import Metrics, Outcome, Slot, as_api_error, check_prompt_size
from edgerun.serve.guard import LOOPBACK_HOSTS, HostCheck, read_within
from edgerun.serve.logprobs import CompletionLogprobs, chat_logprobs
from edgerun.serve.schema import ApiError, GenerationRequest, parse_json, parse_request
from edgerun.serve.structured import parse_structured, reply
from edgerun.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


class ServeState:
    """What the routes share: the slots by model id, the key, limits and metrics."""

    def __init__(
        self,
        slots: dict[str, Slot],
        metrics: Metrics,
        api_key: str | None = None,
        max_body: int = 1 << 20,
        drain_s: float = 30.0,
        body_timeout_s: float = 30.0,
        log_format: str = "text",
    ) -> None:
        self.slots, self.metrics, self.api_key = slots, metrics, api_key
        self.log_format = log_format
        self.max_body, self.drain_s, self.body_timeout_s = max_body, drain_s, body_timeout_s
        self.created = int(time.time())

    def slot(self, model: str) -> Slot:
        slot = self.slots.get(model)
        if slot is None:
            raise ApiError(
                404,
                f"the model '{model}' is not served here; served: {', '.join(self.slots)}",
                "model",
                "model_not_found",
            )
        return slot

    def close(self) -> None:
        for slot in self.slots.values():
            slot.close()


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status == 408:  # the rest of the body may still come: no next request on this line
        headers = {"Connection": "close"}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def endpoint(name: str, public: bool = False) -> Callable[[Handler], Handler]:
    """Wrap a route: bearer auth, OpenAI-style errors (never a traceback), request metrics."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            state: ServeState = request.app.state.serve
            request.state.request_id = uuid.uuid4().hex[:24]
            try:
                if not public:
                    _authorize(request, state.api_key)
                response = await handler(request)
            except Exception as exc:
                api = as_api_error(exc)
                if api is None:
                    log.exception("%s failed", name)
                    api = ApiError(
                        500, f"internal error: {type(exc).__name__}", None, None, "server_error"
                    )
                state.metrics.errors.labels(str(api.status), str(api.code)).inc()
                response = _error(api)
            state.metrics.requests.labels(name, str(response.status_code)).inc()
            if name in GENERATION_ENDPOINTS and not getattr(request.state, "streaming", False):
                _log_request(request, response.status_code)
            return response

        return run

    return wrap


GENERATION_ENDPOINTS = ("completions", "chat")


def _log_request(request: Request, status: int) -> None:
    """The request log's line for `request` (its outcome, once it has one)."""
    state: ServeState = request.app.state.serve
    req = getattr(request.state, "generation", None)
    record = reqlog.fields(
        getattr(request.state, "response_id", request.state.request_id),
        req.model if req is not None else None,
        status,
        getattr(request.state, "outcome", None),
        req.user if req is not None else None,
    )
    reqlog.write(record, state.log_format)


def _authorize(request: Request, key: str | None) -> None:
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    # An empty token never matches, whatever the key (make_server refuses an empty key too).
    matches = bool(token and key) and hmac.compare_digest(token.encode(), key.encode())
    if scheme.lower() != "bearer" or not matches:
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            None,
            "invalid_api_key",
        )


async def _body(request: Request, state: ServeState) -> dict[str, Any]:
    """The JSON body: 415 unless it is declared JSON, 413 past `state.max_body` bytes before
    it is all read, 408 when it takes over `state.body_timeout_s` seconds to arrive."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            415,
            f"the request body must be sent as 'Content-Type: application/json', not"
            f" '{media or 'nothing'}'",
            None,
            "unsupported_media_type",
        )
    limit = state.max_body
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413,
            f"the request body is {declared} bytes; the limit is {limit}",
            None,
            "request_too_large",
        )

    async def read() -> bytes:
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limit:
                raise ApiError(
                    413,
                    f"the request body exceeds the limit of {limit} bytes",
                    None,
                    "request_too_large",
                )
        return bytes(raw)

    return parse_json(await read_within(read, state.body_timeout_s))


@endpoint("health", public=True)
async def health(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    return JSONResponse({"status": "ok", "models": list(state.slots)})


@endpoint("metrics", public=True)
async def metrics(request: Request) -> Response:
    body = request.app.state.serve.metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@endpoint("models")
async def list_models(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    data = [
        {"id": name, "object": "model", "created": state.created, "owned_by": "edgerun"}
        for name in state.slots
    ]
    return JSONResponse({"object": "list", "data": data})


@endpoint("completions")
async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


@endpoint("chat")
async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def _generate(request: Request, chat: bool) -> Response:
    state: ServeState = request.app.state.serve
    body = await _body(request, state)
    req = request.state.generation = parse_request(body, chat)
    req.structured = parse_structured(body, chat)
    slot = state.slot(req.model)
    check_prompt_size(req, slot.model.context_length)
    shape = _Shape(req, chat, request.state.request_id, slot.model.tokenizer)
    request.state.response_id = shape.id
    if req.stream:
        chunks = slot.stream(req)
        # The first item comes before any byte is sent, so 429, 400 (context), 503 stay JSON.
        first = await anext(chunks)
        request.state.streaming = True
        return _sse(_events(shape, first, chunks, request), state.drain_s)
    cancel = threading.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        got, item = [], await anext(chunks := slot.stream(req, cancel))
        while not isinstance(item, Outcome):
            got.append(item)
            item = await anext(chunks)
    finally:
        watcher.cancel()
    request.state.outcome = item
    return JSONResponse(shape.full(got, item))


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the SSE response watches streams itself)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


async def _events(
    shape: _Shape,
    first: Chunk | Outcome,
    chunks: AsyncGenerator[Chunk | Outcome, None],
    request: Request,
) -> AsyncIterator[str]:
    """The SSE data lines: a role delta (chat), text deltas, the finish, usage, [DONE]; the
    request log's line once it ends."""
    import json

    status = 499  # as nginx logs a client that went away before the end
    try:
        if shape.chat:
            yield json.dumps(shape.delta({"role": "assistant", "content": ""}))
        item, held = first, []
        while not isinstance(item, Outcome):
            if item.text and shape.holds:  # tool calls: parsed once the reply is whole
                held.append(item.text)
            elif item.text or item.logprobs is not None:
                yield json.dumps(shape.delta(item.text, chunk=item))
            item = await anext(chunks)
        request.state.outcome = item
        status = 200
        message = shape.reply("".join(held)) if shape.holds else None
        if message is not None:
            calls = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
            yield json.dumps(shape.delta({"tool_calls": calls}))
        elif held:
            yield json.dumps(shape.delta("".join(held)))
        finish = "tool_calls" if message is not None else item.finish_reason
        yield json.dumps(shape.delta(None, finish))
        if shape.req.include_usage:
            yield json.dumps({**shape.head(), "choices": [], "usage": _usage(item)})
    except Exception as exc:  # headers are sent: the error goes in the stream, as OpenAI does
        log.exception("generation failed mid-stream")
        api = as_api_error(exc) or ApiError(500, f"internal error: {type(exc).__name__}")
        status = api.status
        yield json.dumps(api.body())
    else:
        yield "[DONE]"
    finally:
        await chunks.aclose()  # a disconnect lands here: the generation stops at the next token
        _log_request(request, status)


def _sse(events: AsyncIterator[str], drain_s: float) -> Response:
    from sse_starlette.sse import EventSourceResponse

    # On shutdown a running stream gets drain_s to finish before it is closed.
    return EventSourceResponse(events, sep="\n", ping=0, shutdown_grace_period=drain_s)


def _usage(outcome: Outcome) -> dict[str, Any]:
    p, c = outcome.prompt_tokens, outcome.completion_tokens
    cached = int(outcome.stats.get("cached_tokens") or 0)
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class _Shape:
    """The OpenAI response objects of one request (completion or chat, whole or chunked)."""

    def __init__(
        self, req: GenerationRequest, chat: bool, request_id: str, tokenizer: Tokenizer
    ) -> None:
        self.req, self.chat, self.tokenizer = req, chat, tokenizer
        # a reply that may hold tool calls is sent whole, once they are parsed
        self.holds = req.structured is not None and req.structured.calls_tools
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self._completion_logprobs = CompletionLogprobs(tokenizer)

    def logprobs(self, chunks: Sequence[Chunk]) -> dict[str, Any] | None:
        """choice.logprobs for `chunks`, or None when the request asked for none."""
        if self.req.logprobs is None:
            return None
        if self.chat:
            return chat_logprobs(self.tokenizer, chunks)
        return self._completion_logprobs(chunks)

    def head(self, chunk: bool = True) -> dict[str, Any]:
        kind = ("chat.completion" + (".chunk" if chunk else "")) if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.req.model}

    def reply(self, text: str) -> dict[str, Any] | None:
        """The assistant message with tool calls, when the text holds some."""
        return reply(text, self.req, self.tokenizer) if self.holds else None

    def delta(
        self,
        content: str | dict[str, Any] | None,
        finish: str | None = None,
        chunk: Chunk | None = None,
    ) -> dict[str, Any]:
        logprobs = self.logprobs([chunk]) if chunk is not None else None
        if self.chat:
            delta = (
                content if isinstance(content, dict) else ({"content": content} if content else {})
            )
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            text = content if isinstance(content, str) else ""
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**self.head(), "choices": [choice]}

    def full(self, chunks: Sequence[Chunk], outcome: Outcome) -> dict[str, Any]:
        text, logprobs = "".join(c.text for c in chunks), self.logprobs(chunks)
        calls = self.reply(text)
        if self.chat:
            message = calls or {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs}
        choice["finish_reason"] = "tool_calls" if calls else outcome.finish_reason
        return {**self.head(chunk=False), "choices": [choice], "usage": _usage(outcome)}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "no such endpoint", 405: "method not allowed"}.get(status, str(exc))
    return _error(ApiError(status, f"{message}: {request.method} {request.url.path}"))


def build_app(state: ServeState, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> Starlette:
    """The ASGI app serving `state`'s models to requests whose Host is in `allowed_hosts`."""
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        middleware=[Middleware(HostCheck, allowed=allowed_hosts)],
    )
    app.router.redirect_slashes = False  # a redirect would echo the Host header back
    app.state.serve = state
    return app
