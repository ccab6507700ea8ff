"""One generation at a time per model, a bounded queue in front of it, cancellation, metrics.

A model's generation runs in its own worker thread (decoding is blocking CPU work); the chunks
cross to the event loop through an asyncio queue. The per-model lock is released only when the
worker thread has really stopped, so two generations never overlap on one Model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.runtime.model import Chunk, Model
from edgerun.serve.schema import ApiError, GenerationRequest
from edgerun.serve.structured import prompt as structured_prompt

_END = object()
# No tokenizer packs more bytes than this into an average token of real text (about 4 in
# English, 1-3 elsewhere); a longer prompt cannot fit and is refused before tokenizing.
BYTES_PER_TOKEN = 16


class Metrics:
    """Prometheus metrics of one server, in a registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self._drafts: dict[str, list[int]] = {}  # model -> [proposed, accepted] draft tokens
        self.requests = Counter(
            "edgerun_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter("edgerun_errors", "Error answers", ["status", "code"], registry=r)
        self.prompt_tokens = Counter(
            "edgerun_prompt_tokens", "Prompt tokens prefilled", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "edgerun_completion_tokens", "Tokens generated", ["model"], registry=r
        )
        self.cancelled = Counter(
            "edgerun_generations_cancelled",
            "Generations cut off by the client",
            ["model"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "edgerun_queue_depth", "Requests waiting for their model", ["model"], registry=r
        )
        self.running = Gauge("edgerun_running", "Generations running", ["model"], registry=r)
        self.decode_tok_s = Gauge(
            "edgerun_decode_tokens_per_second",
            "Decode speed of the last generation",
            ["model"],
            registry=r,
        )
        self.draft_tokens = Counter(
            "edgerun_draft_tokens", "Speculative draft tokens proposed", ["model"], registry=r
        )
        self.accepted_tokens = Counter(
            "edgerun_draft_tokens_accepted",
            "Speculative draft tokens the model accepted",
            ["model"],
            registry=r,
        )
        self.acceptance = Gauge(
            "edgerun_draft_acceptance_ratio",
            "Accepted over proposed draft tokens since the server started",
            ["model"],
            registry=r,
        )
        self.cache_hits = Counter(
            "edgerun_prompt_cache_hits",
            "Generations that restored a prompt prefix from the prompt cache",
            ["model"],
            registry=r,
        )
        self.cache_misses = Counter(
            "edgerun_prompt_cache_misses",
            "Generations that computed their whole prompt (prompt cache on)",
            ["model"],
            registry=r,
        )
        self.cache_tokens = Counter(
            "edgerun_prompt_cache_reused_tokens",
            "Prompt tokens restored instead of computed",
            ["model"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "edgerun_prompt_cache_bytes", "Bytes the prompt cache holds", ["model"], registry=r
        )
        self.cache_limit = Gauge(
            "edgerun_prompt_cache_limit_bytes",
            "The prompt cache's bound in bytes (0: off)",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "edgerun_time_to_first_token_seconds",
            "Model-side time to first token",
            ["model"],
            registry=r,
        )

    def count_drafts(self, model: str, stats: dict[str, Any]) -> None:
        """Add a generation's speculative draft counts (GenerationStats.to_json())."""
        drafted = int(stats.get("draft_tokens") or 0)
        if drafted:
            self.draft_tokens.labels(model).inc(drafted)
            self.accepted_tokens.labels(model).inc(int(stats.get("accepted_tokens") or 0))
            totals = self._drafts.setdefault(model, [0, 0])
            totals[0] += drafted
            totals[1] += int(stats.get("accepted_tokens") or 0)
            self.acceptance.labels(model).set(totals[1] / totals[0])

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


@dataclass
class Outcome:
    """How a generation ended: token counts and the OpenAI finish_reason."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop" | "length" | None when cancelled
    stats: dict[str, Any]


def prompt_byte_limit(context_length: int) -> int:
    """The most prompt bytes that could fit `context_length` tokens (longer: refused untokenized)."""
    return context_length * BYTES_PER_TOKEN


def check_prompt_size(request: GenerationRequest, context_length: int) -> None:
    """ApiError 400 when the prompt or messages are too many bytes to fit the context, before
    any tokenizing (which costs time in proportion to the text)."""
    limit = prompt_byte_limit(context_length)
    if request.messages is not None:
        texts, param = [m["content"] for m in request.messages], "messages"
    else:
        texts, param = ([request.prompt] if isinstance(request.prompt, str) else []), "prompt"
    size = sum(len(text.encode("utf-8")) for text in texts)
    if size > limit:
        raise ApiError(
            400,
            f"the {param} ({size} bytes) cannot fit the model's context of {context_length}"
            f" tokens: at most {limit} bytes ({BYTES_PER_TOKEN} per token) are accepted",
            param,
            "context_length_exceeded",
        )


def start_generation(model: Model, request: GenerationRequest) -> Iterator[Chunk]:
    """Tokenize, fit max_tokens to the context (400 saying by how much) and start generating."""
    tok = model.tokenizer
    structured = request.structured
    grammar = structured.grammar if structured is not None else None
    if request.messages is not None:
        limit = 2 * prompt_byte_limit(model.context_length)  # what the template may render
        (ids, grammar), param = structured_prompt(tok, request, limit), "messages"
    else:
        prompt = request.prompt
        ids, param = (
            (tok.encode(prompt) if isinstance(prompt, str) else list(prompt or [])),
            "prompt",
        )
    room = model.context_length - len(ids)
    # OpenAI's defaults: 16 tokens for a completion, the rest of the context for a chat.
    wanted = request.max_tokens or (max(room, 1) if request.messages is not None else 16)
    if len(ids) + wanted > model.context_length:
        over = len(ids) + wanted - model.context_length
        raise ApiError(
            400,
            f"the prompt ({len(ids)} tokens) plus max_tokens ({wanted}) exceed the model's context"
            f" length ({model.context_length}) by {over} tokens; shorten the prompt or lower"
            " max_tokens",
            param,
            "context_length_exceeded",
        )
    return model.generate(ids, grammar=grammar, **request.options(wanted))


class Slot:
    """One served model: at most one generation running, at most `max_queue` waiting."""

    def __init__(self, name: str, model: Model, max_queue: int, metrics: Metrics) -> None:
        self.name, self.model, self.max_queue, self.metrics = name, model, max_queue, metrics
        self.closing = False
        self._lock = asyncio.Lock()
        self._waiting: set[asyncio.Task[Any]] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"edgerun-{name}")
        cache = model.prompt_cache
        metrics.cache_limit.labels(name).set(cache.max_bytes if cache is not None else 0)
        metrics.cache_bytes.labels(name).set(0)
        for counter in (metrics.cache_hits, metrics.cache_misses, metrics.cache_tokens):
            counter.labels(name)  # shown as 0 from the start

    async def _acquire(self) -> None:
        busy = self._lock.locked() or bool(self._waiting)
        if self.closing:
            raise ApiError(
                503, "the server is shutting down", None, "shutting_down", "server_error"
            )
        if busy and len(self._waiting) >= self.max_queue:
            raise ApiError(
                429,
                f"model '{self.name}' is busy: {len(self._waiting)} requests already wait"
                " (--max-queue); retry later",
                None,
                "queue_full",
                "rate_limit_error",
            )
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        self.metrics.queue_depth.labels(self.name).set(len(self._waiting))
        try:
            await self._lock.acquire()
        except asyncio.CancelledError:
            if self.closing:
                raise ApiError(
                    503, "the server is shutting down", None, "shutting_down", "server_error"
                ) from None
            raise
        finally:
            self._waiting.discard(task)
            self.metrics.queue_depth.labels(self.name).set(len(self._waiting))

    def close(self) -> None:
        """Refuse new work and send 503 to the waiting requests; the running one goes on."""
        self.closing = True
        for task in list(self._waiting):
            task.cancel()

    async def stream(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> AsyncGenerator[Chunk | Outcome, None]:
        """Wait for the model (429 at once when the queue is full), then yield its chunks and
        finally an Outcome. Closing the iterator early, or setting `cancel`, stops the
        generation at the next token (its Outcome then has finish_reason None)."""
        await self._acquire()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event() if cancel is None else cancel

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone (hard shutdown): just stop
                cancel.set()

        self.metrics.running.labels(self.name).set(1)
        future = loop.run_in_executor(self._executor, self._produce, request, put, cancel)
        future.add_done_callback(lambda f: self._finished(f, queue))
        try:
            while (item := await queue.get()) is not _END:
                yield item
            yield future.result()
        finally:
            cancel.set()

    def _produce(
        self, request: GenerationRequest, put: Callable[[object], None], cancel: threading.Event
    ) -> Outcome:
        chunks = start_generation(self.model, request)
        try:
            for chunk in chunks:
                put(chunk)
                if cancel.is_set():
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        stats = self.model.last_stats
        reason = {"eos": "stop", "stop": "stop", "length": "length"}.get(str(stats.finish_reason))
        return Outcome(stats.prompt_tokens, stats.generated_tokens, reason, stats.to_json())

    def _finished(self, future: asyncio.Future[Outcome], queue: asyncio.Queue[Any]) -> None:
        """In the event loop, once the worker thread has stopped: free the model, count."""
        queue.put_nowait(_END)
        self._lock.release()
        m, name = self.metrics, self.name
        m.running.labels(name).set(0)
        if future.cancelled() or future.exception() is not None:
            return
        outcome = future.result()
        m.prompt_tokens.labels(name).inc(outcome.prompt_tokens)
        m.completion_tokens.labels(name).inc(outcome.completion_tokens)
        if outcome.finish_reason is None:
            m.cancelled.labels(name).inc()
        if outcome.stats.get("ttft_s") is not None:
            m.ttft.labels(name).observe(outcome.stats["ttft_s"])
        if outcome.stats.get("decode_tok_s") is not None:
            m.decode_tok_s.labels(name).set(outcome.stats["decode_tok_s"])
        m.count_drafts(name, outcome.stats)
        self._count_cache(outcome)

    def _count_cache(self, outcome: Outcome) -> None:
        cache, m, name = self.model.prompt_cache, self.metrics, self.name
        if cache is None:
            return
        reused = int(outcome.stats.get("cached_tokens") or 0)
        (m.cache_hits if reused else m.cache_misses).labels(name).inc()
        m.cache_tokens.labels(name).inc(reused)
        m.cache_bytes.labels(name).set(cache.bytes)

    def shutdown(self) -> None:
        """Stop the worker thread (after its generation ends) and free the model."""
        self._executor.shutdown(wait=True)
        self.model.close()


def as_api_error(exc: BaseException) -> ApiError | None:
    """An EdgerunError from the library (bad ids, no chat template, ...) is the client's 400."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EdgerunError):
        return ApiError(400, str(exc))
    return None
