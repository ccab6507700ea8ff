"""A JSON Schema of a finite language and a checker for the subset of JSON Schema it uses,
shared by the structured-output tests (jsonschema is not a dependency)."""

from __future__ import annotations

from typing import Any

# Finite languages: a random model cannot run past max_tokens inside them.
SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["calm", "busy", "odd"]},
        "ok": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 1, "maximum": 9},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["mood", "ok", "level", "tags"],
    "additionalProperties": False,
}
# A tool whose arguments a model can wander in for ever: free strings and an open array (a call
# cut off by max_tokens unless it is steered to its end).
NOTE = {
    "type": "function",
    "function": {
        "name": "save_note",
        "parameters": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "lines": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
            "required": ["title", "lines"],
            "additionalProperties": False,
        },
    },
}


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema used here: type object / array / boolean / integer / string,
    enum, required, additionalProperties false, minimum / maximum, minItems / maxItems."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(k in value for k in schema.get("required", []))
            and (schema.get("additionalProperties", True) or set(value) <= set(props))
            and all(conforms(v, props[k]) for k, v in value.items() if k in props)
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            and all(conforms(v, schema["items"]) for v in value)
        )
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        low, high = schema.get("minimum", value), schema.get("maximum", value)
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return True
