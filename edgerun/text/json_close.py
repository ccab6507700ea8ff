"""Ending constrained JSON within max_tokens: a reply that would run past its token budget is
steered to the nearest end its grammar allows, so that it is always whole, valid JSON.

A grammar bounds what a reply may look like, not how long it gets: a small model that repeats
itself inside a string ("🍰🍰🍰...") or an array ("Bread", "Bread", ...) follows every rule and
is still cut off at max_tokens, invalid. So each JSON grammar carries a `reserve`: about as many
tokens as its shortest instance needs (shortest_bytes: every token is at least one byte). Once
no more than `reserve` tokens are left, every pick prefers, among the tokens the grammar allows,
those that close something: inside a string a closing quote (with any `]` / `}` after it),
outside one `]` / `}`, then `"`, then `,`, then a token without blanks, then anything but
blanks; where the grammar allows none of them (a pattern's characters in a string) the model
picks as usual. Replies that end earlier are untouched. A tool-call grammar (edgerun.text.tools)
carries a reserve too, from the functions' parameters; where a grammar may either end or go on
(another call), it ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

# Fixed costs of the estimate: the model's whitespace and an unresolvable value ($ref, a format).
SLACK = 8
UNKNOWN = 16
MAX_DEPTH = 32  # a schema is request data: its nesting bounds the walk, not the other way

# A comma only where nothing closes (a required key, minItems): after one, an array wants an
# item, and `","` would open the next string as it closes this one, forever.
_IN_STRING = (b'"', b"]}")  # a closing quote, then only closers
_OUTSIDE = (b"]}", b'"', b",")  # tiers tried in order


def reserve_for(schema: Any) -> int:
    """Tokens to keep for closing a reply to `schema`: its shortest instance's bytes, a quarter
    more for whitespace and choices the model makes, and SLACK."""
    need = shortest_bytes(schema)
    return need + need // 4 + SLACK


def shortest_bytes(schema: Any, depth: int = 0) -> int:
    """Bytes of the shortest compact JSON instance of `schema` (an estimate where the schema
    says too little: a pattern, a format or a $ref count UNKNOWN bytes)."""
    if depth > MAX_DEPTH or not isinstance(schema, dict):
        return UNKNOWN if depth > MAX_DEPTH else 1
    if "const" in schema:
        return _dumped(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return min(_dumped(v) for v in schema["enum"])
    for key, pick in (("anyOf", min), ("oneOf", min), ("allOf", max)):
        if isinstance(schema.get(key), list) and schema[key]:
            return pick(shortest_bytes(s, depth + 1) for s in schema[key])
    if "$ref" in schema:
        return UNKNOWN
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) and kind else [kind]
    return min(_of_type(str(k), schema, depth) for k in kinds)


def _of_type(kind: str, schema: dict[str, Any], depth: int) -> int:
    if kind == "object":
        props, required = schema.get("properties"), schema.get("required")
        props = props if isinstance(props, dict) else {}
        required = required if isinstance(required, list) else []
        fields = [
            _dumped(k) + 1 + shortest_bytes(props.get(k, {}), depth + 1)
            for k in required
            if isinstance(k, str)  # request data: anything else is llguidance's 400 to give
        ]
        return 2 + sum(fields) + max(len(fields) - 1, 0)
    if kind == "array":
        count = _count(schema.get("minItems"))
        item = shortest_bytes(schema.get("items", {}), depth + 1)
        return 2 + count * item + max(count - 1, 0)
    if kind == "string":
        if "pattern" in schema or "format" in schema:
            return 2 + max(UNKNOWN, _count(schema.get("minLength")))
        return 2 + 4 * _count(schema.get("minLength"))  # UTF-8: at most 4 bytes a character
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return min(len(str(low)), 24) if isinstance(low, (int, float)) else 1
    return {"boolean": 4, "null": 4}.get(kind, 1)


def _count(value: Any) -> int:
    return min(int(value), 1024) if isinstance(value, int) and value > 0 else 0


def _dumped(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class Closer:
    """The closing preference over one vocabulary: per token its bytes, and bitmasks (in
    llguidance's int32 layout) of the tokens in each tier. Built once per tokenizer."""

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        words = (len(token_bytes) + 31) // 32
        self.token_bytes = token_bytes
        self.in_string = _tier(token_bytes, words, *_IN_STRING)
        self.outside = [_tier(token_bytes, words, b"", chars) for chars in _OUTSIDE]
        # last, a token with no blank in it, then anything but blanks: between two tokens JSON
        # allows a line break and 16 blanks, which a model can spend one token at a time (or
        # one a token: ` :` where `:` does)
        blanks = b" \t\r\n"
        self.outside.append(_without(token_bytes, words, blanks))
        self.outside.append(~_tier(token_bytes, words, b"", blanks))

    def prefer(
        self, allowed: np.ndarray, in_string: bool, ends: np.ndarray | None = None
    ) -> np.ndarray:
        """`allowed` narrowed to the first tier that keeps any token (itself when none does);
        outside a string `ends` (a bitmask of end-of-sequence ids) comes first: a grammar that
        may end or go on (another tool call) ends."""
        tiers = self.outside if ends is None else [ends, *self.outside]
        for tier in [self.in_string] if in_string else tiers:
            narrowed = allowed & tier
            if narrowed.any():
                return narrowed
        return allowed


def _tier(token_bytes: Sequence[bytes], words: int, head: bytes, chars: bytes) -> np.ndarray:
    bits = np.zeros(words * 32, bool)
    allowed = set(chars)
    for i, raw in enumerate(token_bytes):
        rest = raw[len(head) :]
        if raw.startswith(head) and (head or rest) and set(rest) <= allowed:
            bits[i] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


def _without(token_bytes: Sequence[bytes], words: int, chars: bytes) -> np.ndarray:
    bits = np.zeros(words * 32, bool)
    bits[[i for i, raw in enumerate(token_bytes) if not set(raw) & set(chars)]] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


class StringState:
    """Whether the JSON written so far ends inside a string (quotes and escapes tracked)."""

    def __init__(self) -> None:
        self.inside = False
        self._escaped = False

    def feed(self, raw: bytes) -> None:
        """Advance by a token's bytes."""
        for byte in raw:
            if self._escaped:
                self._escaped = False
            elif self.inside and byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:  # quote
                self.inside = not self.inside
