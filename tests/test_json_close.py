"""edgerun.text.json_close: the shortest-instance estimate behind a grammar's reserve, the closing
tiers over a vocabulary, and the string tracking that chooses between them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgerun.text.constrain import apply_bitmask
from edgerun.text.json_close import UNKNOWN, Closer, StringState, reserve_for, shortest_bytes

CONTACT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "age": {"type": "integer", "minimum": 18},
        "kind": {"enum": ["person", "org"]},
        "note": {"type": "string"},  # optional: not in the shortest instance
    },
    "required": ["name", "tags", "age", "kind"],
}


@pytest.mark.parametrize(
    ("schema", "shortest"),
    [
        (CONTACT, {"name": "", "tags": ["", ""], "age": 18, "kind": "org"}),
        ({"type": "object"}, {}),
        ({"anyOf": [{"type": "string", "minLength": 3}, {"type": "null"}]}, None),
        ({"type": ["boolean", "integer"]}, 0),
        ({"const": {"a": [1, 2]}}, {"a": [1, 2]}),
        ({"type": "array", "items": {"type": "boolean"}, "minItems": 1}, [True]),
    ],
)
def test_the_estimate_is_the_shortest_instance(schema: dict[str, Any], shortest: Any) -> None:
    assert shortest_bytes(schema) == len(json.dumps(shortest, separators=(",", ":")))


def test_what_the_schema_does_not_pin_down_counts_a_fixed_amount() -> None:
    assert shortest_bytes({"type": "string", "pattern": "^[0-9]{5}$"}) == 2 + UNKNOWN
    assert shortest_bytes({"$ref": "#/$defs/x"}) == UNKNOWN
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(100):  # a schema nested past the walk's depth bound still ends
        deep = {"type": "array", "items": deep, "minItems": 1}
    assert shortest_bytes(deep) < 100 * 4
    assert reserve_for({"type": "object"}) > shortest_bytes({"type": "object"})
    # malformed parts (llguidance refuses the schema with a 400 later) do not break the walk
    odd = {"type": "object", "required": [[1], 2, "a"], "properties": [], "minimum": "x"}
    assert shortest_bytes(odd) == len('{"a":0}')
    assert shortest_bytes({"anyOf": [3, {"type": "null"}], "type": [None]}) == 1


VOCAB = [b"", b"a", b'"', b'"]', b'",', b"]", b"}", b",", b'","', b" ", b'"}', b"\\"]


def _only(allowed: list[int]) -> np.ndarray:
    bits = np.zeros(32, bool)
    bits[allowed] = True
    return np.packbits(bits, bitorder="little").view(np.int32)


def _picked(
    closer: Closer, allowed: list[int], in_string: bool, ends: list[int] | None = None
) -> list[int]:
    narrowed = closer.prefer(_only(allowed), in_string, None if ends is None else _only(ends))
    logits = apply_bitmask(np.zeros(len(closer.token_bytes), np.float32), narrowed)
    return [int(i) for i in np.flatnonzero(np.isfinite(logits))]


def test_closing_tiers_prefer_ending_over_going_on() -> None:
    closer = Closer(VOCAB)
    # in a string: a closing quote (alone or closing more), never one that opens another item
    assert _picked(closer, [1, 2, 3, 4, 8, 10], in_string=True) == [2, 3, 10]
    # outside: `]` / `}` first, then a quote, then a comma, else whatever the grammar allows
    assert _picked(closer, [2, 5, 7, 9], in_string=False) == [5]
    assert _picked(closer, [2, 7, 9], in_string=False) == [2]
    assert _picked(closer, [7, 9], in_string=False) == [7]
    assert _picked(closer, [1, 9], in_string=False) == [1]  # not the blank
    assert _picked(closer, [9], in_string=False) == [9]
    assert _picked(closer, [1, 9], in_string=True) == [1, 9]  # blanks are text in a string


def test_the_end_comes_first_where_the_grammar_may_end_or_go_on() -> None:
    # after a whole tool call a grammar may allow the end or another call ("<tool_call>...")
    closer = Closer([*VOCAB, b"<"])
    assert _picked(closer, [0, 12], in_string=False) == [0, 12]
    assert _picked(closer, [0, 12], in_string=False, ends=[0]) == [0]
    assert _picked(closer, [5, 12], in_string=False, ends=[0]) == [5]  # no end allowed: tiers


def test_a_token_without_blanks_comes_before_one_with_some() -> None:
    closer = Closer([*VOCAB, b" a", b"\n  "])  # ` :` where `:` would do spends a token on a blank
    assert _picked(closer, [1, 12, 13], in_string=False) == [1]
    assert _picked(closer, [12, 13], in_string=False) == [12]  # never only blanks


def test_string_state_follows_quotes_and_escapes() -> None:
    state = StringState()
    for raw, inside in [(b'{"a', True), (b'\\"', True), (b"\\\\", True), (b'"', False)]:
        state.feed(raw)
        assert state.inside is inside
