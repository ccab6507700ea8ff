"""Constrained decoding: a grammar (any JSON object, a JSON Schema, or a Lark grammar) that the
sampled tokens must follow, on every backend, enforced by llguidance's token masks.

Every backend hands edgerun.runtime.model plain next-token logits, so one mechanism covers ONNX Runtime,
onnxruntime-genai and llama.cpp alike: before each pick the logits of the tokens the grammar
forbids are set to -inf, after it the matcher advances by the token. Why llguidance (and not
xgrammar, outlines-core or llama.cpp grammars): README.md, "Structured output and tools", from
benchmarks/results/constrain-masks-*.json (python -m benchmarks.constrain_masks).

    grammar = constrain.json_schema({"type": "object", "properties": {...}})
    model.generate(prompt, grammar=grammar)
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError, MissingExtraError
from edgerun.text.json_close import Closer, StringState, reserve_for
from edgerun.text.tokenizer import Tokenizer

# A schema or grammar is request data: bound what compiling it may cost (llguidance's defaults
# are generous for a server; these still take every schema of the benchmark in under 10 ms).
_LIMITS = {"max_grammar_size": 200_000, "initial_lexer_fuel": 1_000_000, "max_lexer_states": 50_000}
# JSON whitespace between tokens: one space, or a line break and up to 16 characters of indent
# (compact and pretty-printed JSON). Unbounded, a small model can fill max_tokens with blanks
# and never close the object.
_JSON_OPTIONS = {"whitespace_pattern": r"(\n[ \t]{0,16}|[ ])"}
# An integer with no bounds gets I-JSON's (RFC 7493: exact in every JSON parser), so that a
# model repeating a digit ends the number after 16 digits instead of running to max_tokens.
_SAFE_INTEGER = 2**53 - 1
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas


@dataclass(frozen=True)
class Grammar:
    """What the output must match, as llguidance Lark text (JSON Schemas are embedded with
    `%json {...}`). `what` names it in error messages; with the last `reserve` tokens of
    max_tokens the reply is steered to its end (edgerun.text.json_close; 0: never), once it
    begins with `close_after` (a grammar with a free-text branch: once the JSON one is taken)."""

    lark: str
    what: str = "the grammar"
    reserve: int = 0
    close_after: str = ""


def json_object() -> Grammar:
    """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
    schema = {"type": "object"}
    return Grammar(f"start: {json_grammar(schema)}", "a JSON object", reserve_for(schema))


def json_schema(schema: dict[str, Any], name: str = "the JSON schema") -> Grammar:
    """JSON matching `schema` (a JSON Schema object); check() reports what cannot be compiled."""
    if not isinstance(schema, dict):
        raise EdgerunError(f"{name} must be a JSON object", "pass a JSON Schema such as {}")
    return Grammar(f"start: {json_grammar(schema)}", name, reserve_for(schema))


def json_grammar(schema: dict[str, Any]) -> str:
    """`%json {...}`: `schema` as a Lark expression, with edgerun's JSON options."""
    return f"%json {json.dumps({**_bounded(schema), 'x-guidance': _JSON_OPTIONS})}"


def _bounded(node: Any) -> Any:
    """A copy of the schema `node` whose unbounded integers have I-JSON's bounds."""
    if isinstance(node, list):
        return [_bounded(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: v if k in _DATA_KEYWORDS else _bounded(v) for k, v in node.items()}
    if out.get("type") == "integer":
        out.setdefault("minimum", -_SAFE_INTEGER)
        out.setdefault("maximum", _SAFE_INTEGER)
    return out


def lark(text: str, name: str = "the grammar") -> Grammar:
    """A grammar in llguidance's Lark dialect (see the llguidance documentation)."""
    return Grammar(text, name)


def check(grammar: Grammar) -> None:
    """Raise EdgerunError naming the problem when `grammar` cannot be compiled (no tokenizer
    needed: a server checks a request before it waits for the model)."""
    lib = _llguidance()
    error = lib.LLMatcher.validate_grammar(_as_llg(lib, grammar), limits=_limits(lib))
    if error:
        first = error.strip().splitlines()[0][:300]
        raise EdgerunError(
            f"{grammar.what} cannot be compiled: {first}", "fix the schema or grammar"
        )


class Constraint:
    """One generation's grammar state: masks logits, advances by the chosen token. With a
    Closer and a reserve, mask(logits, left) steers to the grammar's end once `left` tokens
    are no more than the reserve (edgerun.text.json_close), and the reply so far begins with
    `close_after`; the end of sequence, where the grammar allows it, comes first then."""

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        eos_ids: Sequence[int],
        closer: Closer | None = None,
        reserve: int = 0,
        close_after: str = "",
    ) -> None:
        self._matcher = matcher
        self._bits = np.zeros((vocab_size + 31) // 32, np.int32)
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.spent_s = 0.0  # in mask() and accept(), for the stats
        self._closer, self.reserve = closer, reserve if closer is not None else 0
        self._string = StringState()
        self._head, self._after = b"", close_after.encode("utf-8")
        self.closing = False  # whether a pick was steered to the end (the budget ran low)
        ends = np.zeros(self._bits.size * 32, bool)
        ends[[i for i in self.eos_ids if 0 <= i < ends.size]] = True
        self._ends = np.packbits(ends, bitorder="little").view(np.int32)

    def mask(self, logits: np.ndarray, left: int | None = None) -> np.ndarray:
        """`logits` with every token the grammar forbids at -inf (a copy: backends reuse their
        output buffer); `left`: the tokens max_tokens still allows, this one included."""
        start, m = time.perf_counter(), self._matcher
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            raise EdgerunError(f"constrained decoding failed: {_first(m.get_error())}")
        bits = self._bits
        if self._closer is not None and self._steers(left):
            self.closing = True
            bits = self._closer.prefer(bits, self._string.inside, self._ends)
        out = apply_bitmask(logits, bits)
        self.spent_s += time.perf_counter() - start
        return out

    def _steers(self, left: int | None) -> bool:
        """Whether this pick goes to the end: the budget is down to the reserve, and the reply
        has taken the branch that is closed (it begins with close_after)."""
        low = left is not None and left <= self.reserve
        return low and self._head.startswith(self._after)

    def accept(self, token: int) -> bool:
        """Advance by `token`; True when the grammar is complete (nothing may follow)."""
        start, m = time.perf_counter(), self._matcher
        if not m.consume_token(token):
            raise EdgerunError(f"constrained decoding failed: {_first(m.get_error())}")
        if self._closer is not None and 0 <= token < len(self._closer.token_bytes):
            raw = self._closer.token_bytes[token]
            self._string.feed(raw)
            if len(self._head) < len(self._after):
                self._head += raw
        self.spent_s += time.perf_counter() - start
        return bool(m.is_stopped())


def apply_bitmask(logits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """A copy of `logits` with -inf where the int32 bitmask `bits` (bit i of word i // 32 for
    token i, llguidance's and xgrammar's layout) has a 0."""
    allowed = np.unpackbits(bits.view(np.uint8), bitorder="little")[: len(logits)]
    return np.where(allowed.view(bool), logits, -np.inf)


def compile_for(grammar: Grammar, tokenizer: Tokenizer, vocab_size: int) -> Constraint:
    """A Constraint for one generation with `tokenizer` over `vocab_size` logits; EdgerunError
    when the grammar cannot be compiled or the tokenizer cannot be read."""
    lib = _llguidance()
    eos = sorted(tokenizer.eos_ids) or [0]
    lltok = _tokenizer(lib, tokenizer, vocab_size, eos)
    matcher = lib.LLMatcher(lltok, _as_llg(lib, grammar), log_level=0, limits=_limits(lib))
    if matcher.is_error():
        raise EdgerunError(
            f"{grammar.what} cannot be compiled: {_first(matcher.get_error())}",
            "fix the schema or grammar",
        )
    if grammar.reserve <= 0:
        return Constraint(matcher, vocab_size, eos)
    closer = _closer(tokenizer, lltok)
    return Constraint(matcher, vocab_size, eos, closer, grammar.reserve, grammar.close_after)


# Building llguidance's token trie takes about a second for a 49k vocabulary: once per tokenizer.
_TOKENIZERS: weakref.WeakKeyDictionary[Tokenizer, tuple[int, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _tokenizer(lib: Any, tokenizer: Tokenizer, vocab_size: int, eos: list[int]) -> Any:
    with _LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        if cached is not None and cached[0] == vocab_size:
            return cached[1]
        spec = tokenizer.hf_json()
        if spec is not None:
            made = lib.LLTokenizer(_byte_level(spec), n_vocab=vocab_size, eos_token=eos)
        elif (vocab := tokenizer.llama_vocab()) is not None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            made = lltokenizer_from_vocab(vocab, n_vocab=vocab_size, eos_token=eos)
        else:
            raise EdgerunError(
                f"constrained decoding needs a tokenizer.json or a GGUF vocabulary, not"
                f" {type(tokenizer).__name__}",
                "use an artifact exported by edgerun",
            )
        _TOKENIZERS[tokenizer] = (vocab_size, made)
        return made


_CLOSERS: weakref.WeakKeyDictionary[Tokenizer, Closer] = weakref.WeakKeyDictionary()


def _closer(tokenizer: Tokenizer, lltok: Any) -> Closer:
    """The tokenizer's Closer (every token's bytes: 0.4 s for a 49k vocabulary, once)."""
    with _LOCK:
        made = _CLOSERS.get(tokenizer)
        if made is None or len(made.token_bytes) != lltok.vocab_size:
            raw = [
                b"" if lltok.is_special_token(i) else bytes(lltok.decode_bytes([i]))
                for i in range(lltok.vocab_size)
            ]
            made = _CLOSERS[tokenizer] = Closer(raw)
        return made


def _byte_level(spec: str) -> str:
    """The tokenizer.json with a plain ByteLevel decoder when its decoder sequence holds one:
    converters from GGUF write ByteFallback + ByteLevel, which llguidance would read as a
    SentencePiece vocabulary (every byte-level token, 'Ġ' for a space, taken literally)."""
    data = json.loads(spec)
    decoder = data.get("decoder") or {}
    parts = decoder.get("decoders") or [] if decoder.get("type") == "Sequence" else []
    level = [d for d in parts if isinstance(d, dict) and d.get("type") == "ByteLevel"]
    if not level:
        return spec
    data["decoder"] = level[0]
    return json.dumps(data)


def _as_llg(lib: Any, grammar: Grammar) -> str:
    return str(lib.LLMatcher.grammar_from_lark(grammar.lark))


def _limits(lib: Any) -> Any:
    return lib.LLParserLimits(**_LIMITS, verbose_errors=False)


def _first(error: str) -> str:
    return (error.strip().splitlines() or ["unknown error"])[0][:300]


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise MissingExtraError("llguidance", "structured") from None
    return llguidance
