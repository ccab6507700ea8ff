"""JSON schemas of varied shapes (flat, nested, arrays, enums, numbers with bounds, optional
fields, anyOf) with a prompt for each, shared by the structured-output benchmarks."""

from __future__ import annotations

from typing import Any

SCHEMAS: list[tuple[str, dict[str, Any], str]] = [
    (
        "person",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "Describe a person called {topic} as JSON with a name and an age.",
    ),
    (
        "city",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "country": {"type": "string"},
                "population": {"type": "integer", "minimum": 0},
            },
            "required": ["city", "country", "population"],
            "additionalProperties": False,
        },
        "Give facts about a city related to {topic} as JSON.",
    ),
    (
        "sentiment",
        {
            "type": "object",
            "properties": {
                "label": {"enum": ["positive", "negative", "neutral"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["label", "score"],
            "additionalProperties": False,
        },
        "Classify the sentiment of 'I love {topic}' as JSON.",
    ),
    (
        "tags",
        {
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            },
            "required": ["tags"],
            "additionalProperties": False,
        },
        "List up to five tags for an article about {topic} as JSON.",
    ),
    (
        "order",
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer", "minimum": 1},
                        },
                        "required": ["sku", "qty"],
                        "additionalProperties": False,
                    },
                    "minItems": 1,
                    "maxItems": 3,
                },
                "paid": {"type": "boolean"},
            },
            "required": ["id", "items", "paid"],
            "additionalProperties": False,
        },
        "Write an order for {topic} as JSON.",
    ),
    (
        "event",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 40},
                "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                "online": {"type": "boolean"},
            },
            "required": ["title", "date", "online"],
            "additionalProperties": False,
        },
        "Plan an event about {topic}; answer in JSON.",
    ),
    (
        "recipe",
        {
            "type": "object",
            "properties": {
                "dish": {"type": "string"},
                "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
            },
            "required": ["dish", "steps", "minutes"],
            "additionalProperties": False,
        },
        "Give a short recipe with {topic} as JSON.",
    ),
    (
        "answer",
        {
            "type": "object",
            "properties": {
                "answer": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
                "confidence": {"enum": ["low", "medium", "high"]},
            },
            "required": ["answer", "confidence"],
            "additionalProperties": False,
        },
        "How many letters are in the word {topic}? Answer as JSON.",
    ),
    (
        "contact",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "address": {
                    "type": "object",
                    "properties": {
                        "street": {"type": "string"},
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["street", "zip"],
                    "additionalProperties": False,
                },
                "phone": {"type": "string"},
            },
            "required": ["name", "address"],
            "additionalProperties": False,
        },
        "Make up a contact card for someone who likes {topic}, as JSON.",
    ),
    (
        "matrix",
        {
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                    "maxItems": 3,
                }
            },
            "required": ["rows"],
            "additionalProperties": False,
        },
        "Write a small matrix of integers about {topic} as JSON.",
    ),
]

TOPICS = ["Paris", "apples", "rain", "chess", "Ada", "rivers", "bread", "music", "snow", "robots"]

# One valid instance per schema: the token path the mask benchmark walks.
INSTANCES: dict[str, Any] = {
    "person": {"name": "Ada Lovelace", "age": 36},
    "city": {"city": "Paris", "country": "France", "population": 2102650},
    "sentiment": {"label": "positive", "score": 0.93},
    "tags": {"tags": ["travel", "food", "history"]},
    "order": {
        "id": 17,
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        "paid": True,
    },
    "event": {"title": "Chess night", "date": "2026-12-24", "online": False},
    "recipe": {"dish": "Bread", "steps": ["Mix flour and water", "Bake"], "minutes": 90},
    "answer": {"answer": 5, "confidence": "high"},
    "contact": {"name": "Sam", "address": {"street": "1 Main St", "zip": "12345"}},
    "matrix": {"rows": [[1, 2], [3, 4]]},
}


def requests(n: int) -> list[tuple[str, dict[str, Any], str]]:
    """`n` (name, schema, prompt) cases cycling through the schemas, each with its own topic."""
    out = []
    for i in range(n):
        name, schema, prompt = SCHEMAS[i % len(SCHEMAS)]
        topic = TOPICS[(i // len(SCHEMAS)) % len(TOPICS)]
        out.append((name, schema, prompt.format(topic=topic)))
    return out


def validate(value: Any, schema: dict[str, Any]) -> bool:
    """Whether `value` satisfies `schema`, for the JSON Schema keywords used above (an
    independent check of the output: jsonschema is not a dependency)."""
    import re

    if "anyOf" in schema:
        return any(validate(value, s) for s in schema["anyOf"])
    if "enum" in schema and value not in schema["enum"]:
        return False
    checks = {
        "object": lambda v: isinstance(v, dict) and _object_ok(v, schema),
        "array": lambda v: isinstance(v, list) and _array_ok(v, schema),
        "string": lambda v: (
            isinstance(v, str)
            and len(v) <= schema.get("maxLength", len(v))
            and ("pattern" not in schema or re.search(schema["pattern"], v) is not None)
        ),
        "integer": lambda v: (
            isinstance(v, int) and not isinstance(v, bool) and _range_ok(v, schema)
        ),
        "number": lambda v: (
            isinstance(v, (int, float)) and not isinstance(v, bool) and _range_ok(v, schema)
        ),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    kind = schema.get("type")
    return kind is None or checks[kind](value)


def _object_ok(value: dict[str, Any], schema: dict[str, Any]) -> bool:
    props = schema.get("properties", {})
    if any(k not in value for k in schema.get("required", [])):
        return False
    if schema.get("additionalProperties") is False and not set(value) <= set(props):
        return False
    return all(validate(v, props[k]) for k, v in value.items() if k in props)


def _array_ok(value: list[Any], schema: dict[str, Any]) -> bool:
    if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
        return False
    return all(validate(v, schema.get("items", {})) for v in value)


def _range_ok(value: float, schema: dict[str, Any]) -> bool:
    return schema.get("minimum", value) <= value <= schema.get("maximum", value)
