"""The library API: ``edgerun.load(path, profile)`` -> Model, one streaming interface for every
backend.

    with edgerun.load("out/onnx-int4") as model:           # profile auto-detected
        for chunk in model.generate("The capital of France is", max_tokens=32):
            print(chunk.text, end="", flush=True)
        print(model.last_stats.decode_tok_s, model.info.providers)

Tokenization, sampling, stop handling and timing live here, shared by all backends; a backend
only maps token ids to next-token logits (edgerun.backends.base.Backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.backends.base import Artifact, Backend, resolve_artifact
from edgerun.backends.select import open_backend, pick_from_export_dir
from edgerun.core.errors import EdgerunError
from edgerun.device.resolve import Resolved, resolve_profile
from edgerun.runtime.kvcache import KvSnapshot, PrefixCache, make_cache
from edgerun.runtime.speculative import PROMPT_LOOKUP, SpeculativeDecoder, resolve_mode
from edgerun.text.constrain import Constraint, Grammar, compile_for
from edgerun.text.sampling import Sampler, SamplingParams
from edgerun.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class TokenLogprobs:
    """The log-probability of a chosen token under the model (before temperature / top-k /
    top-p), and the `top` most likely tokens as (id, log-probability), most likely first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """One generated token and the text it completed (may be "" mid-character or while the
    text could still turn into a stop string). A last chunk with token_id None carries text that
    was held back for a stop string that never completed."""

    token_id: int | None
    text: str
    logprobs: TokenLogprobs | None = None  # when generate(logprobs=...) asked for them


@dataclass
class GenerationStats:
    """Timings of the last generate() call. Time the caller spends between chunks is excluded."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens restored from the prompt cache, not recomputed
    generated_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float | None = None
    decode_s: float = 0.0
    token_latencies_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None  # "length" | "eos" | "stop" | "cancelled"
    # speculative decoding (edgerun.runtime.speculative): None when it was off for this generation
    speculative: str | None = None
    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_passes: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over drafted tokens (None without drafts)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    constrain_s: float = 0.0  # of the time above, spent on grammar masks (edgerun.text.constrain)
    # whether the grammar's end was steered to as max_tokens drew near (edgerun.text.json_close)
    steered: bool = False

    @property
    def prefill_tok_s(self) -> float | None:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else None

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first, over the time they took (the first one belongs to TTFT)."""
        n = len(self.token_latencies_s) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "acceptance_rate": self.acceptance_rate,
        }


@dataclass
class ModelInfo:
    """What actually runs: backend, ACTIVE execution providers (read back from the session),
    threads, the profile and why it was chosen, and the artifact."""

    backend: str
    providers: list[str]
    threads: int | None
    profile_id: str | None
    profile_reason: str
    artifact: str
    format: str
    manifest: dict[str, Any] = field(repr=False)  # whole in to_json(); too long to print
    context_length: int
    requested_providers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    load_s: float = 0.0
    # when `path` was an export directory of several formats: which one was picked, and why
    artifact_reason: str | None = None
    # why context_length is what it is (asked for, the model's, or sized to the memory budget)
    context_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        """One line of what runs: format, backend and providers, threads, context, profile."""
        threads = f"{self.threads} threads" if self.threads else "default threads"
        return (
            f"{self.format} ({self.artifact}) on {self.backend} [{', '.join(self.providers)}],"
            f" {threads}, context {self.context_length}, profile {self.profile_id}"
            f" ({self.profile_reason})"
        )


class Model:
    """A loaded artifact. Use edgerun.load() to make one; close() (or `with`) frees it."""

    def __init__(
        self,
        artifact: Artifact,
        backend: Backend,
        tokenizer: Tokenizer,
        info: ModelInfo,
        prompt_cache: PrefixCache | None = None,
    ) -> None:
        self.artifact = artifact
        self.tokenizer = tokenizer
        self.info = info
        self.context_length = info.context_length
        self.last_stats = GenerationStats()
        # KV snapshots of earlier generations (edgerun.runtime.kvcache); None: off
        self.prompt_cache = prompt_cache
        self._backend: Backend | None = backend
        self._generation = 0
        # generate()'s speculative mode when it is given none (edgerun.runtime.speculative.MODES)
        self.speculative: str | bool = "auto"

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str | int] | None = None,
        ignore_eos: bool = False,
        truncate: str | None = None,
        speculative: str | bool | None = None,
        logprobs: int | None = None,
        grammar: Grammar | None = None,
    ) -> Iterator[Chunk]:
        """Stream the continuation of `prompt` (text, or token ids used as they are).

        Greedy when temperature is 0; else temperature, top-k, top-p and a seeded draw. `stop`:
        strings that end generation (not included in the text) and/or extra stop token ids.
        `ignore_eos` does not stop on the model's end-of-sequence tokens, so generation runs to
        max_tokens (benchmarks) unless a `stop` matches. `truncate="left"` drops the
        oldest prompt tokens when prompt + max_tokens exceed the context; otherwise that is an
        error. `speculative`: prompt-lookup decoding (edgerun.runtime.speculative) — "auto" uses it for
        greedy decoding on a backend whose batched pass is bit-identical to one-token steps
        (so the tokens are the same; no built-in CPU backend is), "prompt-lookup" / "on"
        always (faster on text that repeats the prompt; quantized kernels round a batched pass
        differently, so a near-tie may flip a token), False / "off" never; None: the model's
        `speculative` setting (load()'s). `logprobs` (0 or more) puts each token's
        log-probability and that many top alternatives in its chunk. A prompt that shares a
        prefix with an earlier generation's tokens starts from their KV cache (`prompt_cache`).
        `grammar` (edgerun.text.constrain) restricts every pick to tokens it allows and ends the
        generation when it is complete (no speculation then). Arguments are checked here,
        before the first chunk is requested.
        """
        backend = self._open_backend()
        if max_tokens <= 0:
            raise EdgerunError(
                f"max_tokens must be at least 1, got {max_tokens}",
                "pass max_tokens=1 or more",
                cli_hint="pass --max-tokens 1 or more",
            )
        if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise EdgerunError(
                f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {logprobs}",
                "ask for fewer alternatives per token",
            )
        sampler = Sampler(SamplingParams(temperature, top_k, top_p, seed))
        mode = self.speculative if speculative is None else speculative
        # drafts are not checked against a grammar: no speculation under one
        speculate = (
            None if grammar is not None else resolve_mode(mode, sampler.params.greedy, backend)
        )
        ids = self._prompt_ids(prompt)
        ids = self._fit(ids, max_tokens, truncate)
        stops = _Stops(stop)
        eos = (frozenset() if ignore_eos else self.tokenizer.eos_ids) | stops.ids
        constraint = None if grammar is None else self._constraint(backend, grammar)
        self._generation += 1
        return self._stream(
            backend,
            ids,
            max_tokens,
            sampler,
            stops,
            eos,
            self._generation,
            speculate,
            logprobs,
            constraint,
        )

    def decode_logits(
        self, ids: Sequence[int], steps: int, forced: Sequence[int] | None = None
    ) -> tuple[list[int], np.ndarray]:
        """Greedy decoding of `steps` tokens after the prompt `ids`, one token at a time with the
        backend's KV cache, as generate() decodes. Returns the tokens chosen and the logits each
        was chosen from ([steps, vocab], float32): what export validation compares with a
        forward pass without a cache. With `forced` (at least `steps` token ids), those tokens
        are fed instead of the greedy choices (teacher forcing: edgerun.exporters.fidelity_check scores
        a text this way). Raises EdgerunError on a bad prompt or a closed model."""
        backend = self._open_backend()
        prompt = self._fit(self._prompt_ids(ids), max(steps, 1), None)
        feed = None if forced is None else self._prompt_ids(forced)
        if feed is not None and len(feed) < steps - 1:
            raise EdgerunError(
                f"{len(feed)} forced tokens for {steps} steps", "pass a token for every step"
            )
        self._generation += 1  # a generator still running on this model stops with an error
        tokens: list[int] = []
        rows: list[np.ndarray] = []
        logits = backend.prefill(prompt, len(prompt) + steps)
        for step in range(steps):
            rows.append(np.array(logits, dtype=np.float32))  # a copy: backends reuse the buffer
            tokens.append(int(np.argmax(rows[-1])))
            if step < steps - 1:
                logits = backend.decode(tokens[-1] if feed is None else feed[step])
        return tokens, np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def forced_logits(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Logits after each of ids[start-1:], fed as decoding feeds tokens: ids[:start] in one
        prefill, then every later id one at a time with the KV cache (teacher forcing, so two
        settings are compared on the same tokens): decode_logits with `forced`. Returns
        [len(ids) - start + 1, vocab] float32. Raises EdgerunError on a bad prompt or a closed
        model."""
        ids = list(ids)
        if not 1 <= start <= len(ids):
            raise EdgerunError(f"start {start} is outside the {len(ids)} ids", "pass 1..len(ids)")
        rest = ids[start:]
        _, logits = self.decode_logits(ids[:start], len(rest) + 1, forced=rest or None)
        return logits

    def chat(self, messages: Sequence[dict[str, Any]], **kwargs: Any) -> Iterator[Chunk]:
        """generate() on `messages` ([{"role", "content"}]) rendered with the chat template."""
        return self.generate(self.tokenizer.encode_chat(messages), **kwargs)

    def _constraint(self, backend: Backend, grammar: Grammar) -> Constraint:
        vocab = getattr(backend, "vocab_size", None) or getattr(self.tokenizer, "vocab_size", None)
        if not vocab:
            raise EdgerunError(
                f"the {backend.name} backend does not say its vocabulary size",
                "constrained decoding needs it: give the backend a vocab_size attribute",
            )
        return compile_for(grammar, self.tokenizer, int(vocab))

    def _open_backend(self) -> Backend:
        if self._backend is None:
            raise EdgerunError("this model was closed", "load it again with edgerun.load()")
        return self._backend

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(i) for i in prompt]
            vocab = getattr(self._backend, "vocab_size", None)
            bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
            if bad:
                raise EdgerunError(
                    f"token id {bad[0]} is outside the vocabulary (0..{vocab})",
                    "pass ids from model.tokenizer.encode()",
                )
        if not ids:
            raise EdgerunError("the prompt is empty", "pass some text or at least one token id")
        return ids

    def _fit(self, ids: list[int], max_tokens: int, truncate: str | None) -> list[int]:
        """Apply the context limit: error, or keep the newest tokens with truncate='left'."""
        if len(ids) + max_tokens <= self.context_length:
            return ids
        if truncate == "left" and max_tokens < self.context_length:
            return ids[len(ids) + max_tokens - self.context_length :]
        if truncate not in (None, "left"):
            raise EdgerunError(f"unknown truncate mode '{truncate}'", "use truncate='left' or none")
        raise EdgerunError(
            f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed the context"
            f" length {self.context_length}",
            "shorten the prompt, lower max_tokens, pass truncate='left', or load with a larger"
            " context=",
            cli_hint="shorten the prompt, lower --max-tokens, pass --truncate left, or a larger"
            " --context",
        )

    def _stream(
        self,
        backend: Backend,
        ids: list[int],
        max_tokens: int,
        sampler: Sampler,
        stops: _Stops,
        eos: frozenset[int],
        generation: int,
        speculate: str | None = None,
        logprobs: int | None = None,
        constraint: Constraint | None = None,
    ) -> Iterator[Chunk]:
        stats = self.last_stats = GenerationStats(prompt_tokens=len(ids))
        clock = time.perf_counter
        start = clock()
        logits, stats.cached_tokens = self._prefill(backend, ids, len(ids) + max_tokens)
        spec = None
        if speculate:
            spec = SpeculativeDecoder(backend, ids, len(ids) + max_tokens, stats)
            stats.speculative = PROMPT_LOOKUP
        stats.prefill_s = clock() - start
        fed = list(ids)  # the tokens in the backend's KV cache
        try:
            yield from self._decode_loop(
                spec or backend.decode, logits, fed, start, max_tokens, sampler, stops, eos,
                generation, logprobs, constraint,
            )  # fmt: skip
        finally:
            if generation == self._generation:  # else another generation owns the backend
                if spec is not None:
                    spec.settle()  # the KV cache holds what plain decoding leaves: `fed`
                self._remember(backend, fed, len(ids))

    def _prefill(self, backend: Backend, ids: list[int], total: int) -> tuple[np.ndarray, int]:
        """The prompt's last logits and how many prompt tokens came from the prompt cache."""
        cache = self.prompt_cache
        hit = cache.match(ids, backend.prefix_align) if cache is not None else None
        if hit is None:
            return backend.prefill(ids, total), 0
        keep, snap = hit
        return backend.resume(snap.state, keep, ids, total), keep

    def _remember(self, backend: Backend, fed: list[int], prompt: int) -> None:
        """Keep the backend's KV cache of `fed` in the prompt cache, for the next prompt: only
        the first `prompt` positions (cut to Backend.prefix_align) unless the backend's
        one-token steps equal a batched pass, so that a later prompt that re-sends the reply
        computes it in a batch as a cold prefill does and decodes the same tokens."""
        if self.prompt_cache is None or self.prompt_cache.max_bytes == 0:
            return
        keep = len(fed)
        if not backend.exact_verify:
            keep = prompt // backend.prefix_align * backend.prefix_align
        taken = backend.snapshot(keep) if keep > 0 else None
        if taken is not None:
            self.prompt_cache.put(KvSnapshot(tuple(fed[:keep]), taken[0], taken[1]))

    def _decode_loop(
        self,
        step: Callable[[int], np.ndarray],
        logits: np.ndarray,
        fed: list[int],
        start: float,
        max_tokens: int,
        sampler: Sampler,
        stops: _Stops,
        eos: frozenset[int],
        generation: int,
        logprobs: int | None,
        constraint: Constraint | None,
    ) -> Iterator[Chunk]:
        """Sample, detokenize, stop and time each token after the prompt (`start`: when the
        prompt went in); `step(token)` feeds one token and returns the next logits (the backend's
        decode, or edgerun.runtime.speculative's decoder); every token fed is appended to `fed`."""
        stats, clock = self.last_stats, time.perf_counter
        detok = self.tokenizer.stream(list(fed))
        stats.finish_reason = "cancelled"  # stays so if the caller stops iterating early
        for i in range(max_tokens):
            scored = None if logprobs is None else _logprobs(logits, logprobs)
            token = sampler(
                logits if constraint is None else constraint.mask(logits, max_tokens - i)
            )
            # a complete grammar allows only its end-of-sequence ids (even with ignore_eos)
            done = constraint is not None and constraint.accept(token)
            if constraint is not None:
                stats.constrain_s, stats.steered = constraint.spent_s, constraint.closing
            if token in eos or (done and token in constraint.eos_ids):  # type: ignore[union-attr]
                stats.finish_reason = "stop" if token in stops.ids else "eos"
                break
            text = detok.push(token)
            if i == max_tokens - 1 or done:
                text += detok.flush()
            text, hit = stops.feed(text)
            last = hit or done or i == max_tokens - 1
            if last and not hit:
                text += stops.flush()
            ready = clock()
            stats.token_latencies_s.append(ready - start)
            if i == 0:
                stats.ttft_s = ready - start
            else:
                stats.decode_s += ready - start
            stats.generated_tokens += 1
            if last:
                stats.finish_reason = "stop" if hit or done else "length"
            yield Chunk(token, text, None if scored is None else scored(token))
            if last:
                return
            start = clock()  # the caller's time between chunks is not counted
            if generation != self._generation:
                raise EdgerunError(
                    "this generation was cut off: the model was closed or another generate()"
                    " started on it",
                    "finish one iterator before starting the next, or load a second Model",
                )
            logits = step(token)
            fed.append(token)
        # Ended on an end-of-sequence / stop id: release what was held back.
        tail, hit = stops.feed(detok.flush())
        pending = tail if hit else tail + stops.flush()
        if pending:
            yield Chunk(None, pending)

    def close(self) -> None:
        """Free the backend (model weights, KV cache); further calls raise EdgerunError."""
        if self._backend is not None:
            self._generation += 1  # a generator still running stops with an error
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<edgerun.Model {self.info.format} via {self.info.backend} {self.info.providers}>"


MAX_TOP_LOGPROBS = 20  # as OpenAI


def _logprobs(logits: np.ndarray, top: int) -> Any:
    """A function of the chosen token id giving its TokenLogprobs under `logits`, with the
    `top` most likely alternatives (computed now: the backend reuses the logits buffer)."""
    row = logits.astype(np.float64)
    shifted = row - row.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    best = np.argpartition(-logp, top - 1)[:top] if top else np.zeros(0, np.int64)
    best = best[np.argsort(-logp[best], kind="stable")]
    alternatives = tuple((int(i), float(logp[i])) for i in best)
    return lambda token: TokenLogprobs(float(logp[token]), alternatives)


class _Stops:
    """Stop strings (matched on the generated text, held back while they may still match) and
    stop token ids."""

    def __init__(self, stop: str | Sequence[str | int] | None) -> None:
        items = [stop] if isinstance(stop, (str, int)) else list(stop or [])
        self.strings = [s for s in items if isinstance(s, str) and s]
        self.ids = frozenset(int(s) for s in items if isinstance(s, int))
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string completed)."""
        if not self.strings:
            return text, False
        buf = self._pending + text
        hits = [buf.find(s) for s in self.strings if s in buf]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        keep = max((_overlap(buf, s) for s in self.strings), default=0)
        self._pending = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def load(
    path: str | Path,
    profile: str | Path | Resolved | None = None,
    *,
    threads: int | None = None,
    backend: str | None = None,
    strict: bool = False,
    context: int | None = None,
    verify: bool = False,
    speculative: str | bool = "auto",
    prompt_cache_mb: float | None = None,
    **options: Any,
) -> Model:
    """Load an artifact and pick its backend and execution providers from a device profile.

    path: artifact directory (edgerun.json) or a bare .gguf / .onnx file. profile: an id, a TOML
    path, None to auto-detect, or one a caller already resolved (edgerun.device.resolve.Resolved:
    the bench parent passes its own to every worker). threads / context override the profile and
    the model; backend forces one ("onnxruntime" | "genai" | "llamacpp" or a plugin); strict turns a provider
    fallback into an error; verify hashes every file of the artifact in full instead of the
    default check (small files hashed, large ones sampled: edgerun.core.integrity); speculative:
    generate()'s default speculative mode ("auto" | "on" | "off", see Model.generate);
    prompt_cache_mb bounds the prompt cache (edgerun.runtime.kvcache; 0: off; None: what the profile's
    memory budget leaves, at most 256 MB; always off on a backend that cannot copy its KV
    cache); options are backend options (e.g. n_gpu_layers). Raises EdgerunError.
    """
    resolve_mode(speculative, True, None)  # a bad mode fails before the model loads
    started = time.perf_counter()
    for name, value in (("threads", threads), ("context", context)):
        if value is not None and value < 1:
            raise EdgerunError(
                f"{name} must be at least 1, got {value}",
                f"pass {name}=1 or more, or omit it",
                cli_hint=f"pass --{name} 1 or more, or omit it",
            )
    if prompt_cache_mb is not None and not prompt_cache_mb >= 0:
        raise EdgerunError(
            f"prompt_cache_mb must be 0 or more, got {prompt_cache_mb}",
            "pass --prompt-cache-mb 0 to turn the prompt cache off",
        )
    resolved = resolve_profile(profile)  # once: the format pick and the backend share it
    path, picked = pick_from_export_dir(Path(path), resolved)
    artifact = resolve_artifact(path, verify=verify)
    opened = open_backend(artifact, resolved, threads, backend, strict, context, options)
    info = ModelInfo(
        backend=opened.backend.name,
        providers=list(opened.backend.providers),
        threads=opened.backend.threads,
        profile_id=opened.profile_id,
        profile_reason=opened.profile_reason,
        artifact=str(artifact.model_file if artifact.manifest.get("bare_file") else artifact.path),
        format=artifact.format,
        manifest=artifact.manifest,
        context_length=opened.context_length,
        requested_providers=opened.requested_providers,
        warnings=opened.warnings,
        load_s=time.perf_counter() - started,
        artifact_reason=picked,
        context_reason=opened.context_reason,
    )
    can_reuse = opened.backend.can_snapshot
    cache = make_cache(prompt_cache_mb, opened.memory_room) if can_reuse else None
    model = Model(artifact, opened.backend, opened.tokenizer, info, cache)
    model.speculative = speculative
    return model
