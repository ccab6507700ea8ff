"""The shape of a bench results file, checked before any of it is used.

Results files are shared between labs, so they are untrusted data: every field that `compare`,
the tables and the HTML report read is checked for its type here, and a file that breaks the
shape is refused with one line naming the field (``runs[0].artifacts[1].summary...``). Fields
that nothing reads are not checked, and unknown fields are allowed (newer writers add some).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import json_type

Where = tuple[str | int, ...]
MAX_NUMBER = 1e200


@dataclass(frozen=True)
class Leaf:
    """A scalar: `kind` is "str", "int", "num" (finite) or "bool"; null allowed unless required."""

    kind: str
    nullable: bool = True


@dataclass(frozen=True)
class Obj:
    """A JSON object with these checked fields (others are ignored); null allowed if nullable."""

    fields: dict[str, Any]
    required: tuple[str, ...] = ()
    nullable: bool = False


@dataclass(frozen=True)
class Arr:
    """A JSON array whose items follow `item`."""

    item: Any
    nullable: bool = False


@dataclass(frozen=True)
class Map:
    """A JSON object of any keys (that `key_kind` accepts) whose values follow `item`."""

    item: Any
    key_kind: str = "str"


STR, INT, NUM, BOOL = Leaf("str"), Leaf("int"), Leaf("num"), Leaf("bool")
STATS = Obj(
    {"median": Leaf("num", False), "stdev": NUM, "min": NUM, "max": NUM, "n": INT},
    required=("median",),
    nullable=True,
)
VALIDATION = Obj(
    {"ppl_ratio": NUM, "mean_kl": NUM, "top1_agreement": NUM, "passed": BOOL}, nullable=True
)
DEVICE = Obj(
    {
        "name": STR,
        "cpu_model": STR,
        "physical_cores": INT,
        "ram_bytes": NUM,
        "os": STR,
        "os_release": STR,
        "kernel": STR,
        "profile": Obj({"id": STR, "power_meter": STR}, nullable=True),
    },
    nullable=True,
)
POWER = Obj(
    {
        **{k: BOOL for k in ("available", "estimate", "lower_bound")},
        **{k: STR for k in ("meter", "scope", "method", "source", "error", "reason", "hint")},
        "idle_watts": NUM,
    },
    nullable=True,
)
ARTIFACT = Obj(
    {
        "name": Leaf("str", False),
        "backend": STR,
        "providers": Arr(Leaf("str", False), nullable=True),
        "threads": INT,
        "profile_id": STR,
        "size_bytes": NUM,
        "validation": VALIDATION,
        "summary": Obj(
            {"load_s": STATS, "by_prompt": Map(Map(STATS), key_kind="prompt")},
            required=("by_prompt",),
        ),
    },
    required=("name", "summary"),
)
RUN = Obj(
    {
        "id": STR,
        "created": STR,
        "device": DEVICE,
        "power": POWER,
        "workload": Obj(
            {
                "gen_tokens": Leaf("int", False),
                "reps": Leaf("int", False),
                "prompt_tokens": Arr(Leaf("int", False), nullable=True),
            },
            required=("gen_tokens", "reps"),
        ),
        "artifacts": Arr(ARTIFACT),
    },
    required=("workload", "artifacts"),
)
RESULTS = Obj({"runs": Arr(RUN)}, required=("runs",))


def check_results(data: Any, source: str) -> None:
    """Raise EdgerunError naming the first field of `data` that breaks the results shape."""
    problem = _check(data, RESULTS, ())
    if problem:
        where, message = problem
        raise EdgerunError(
            f"{source}: {_dotted(where) or 'the file'} {message}",
            "pass a file written by `edgerun bench --json`, or fix that field",
        )


def _check(value: Any, spec: Any, where: Where) -> tuple[Where, str] | None:
    if value is None and getattr(spec, "nullable", False):
        return None
    if isinstance(spec, Leaf):
        return None if _leaf_ok(value, spec.kind) else (where, _expected(spec.kind, value))
    if isinstance(spec, Arr):
        if not isinstance(value, list):
            return where, _expected("array", value)
        items = enumerate(value)
        return next((p for i, v in items if (p := _check(v, spec.item, (*where, i)))), None)
    if not isinstance(value, dict):
        return where, _expected("object", value)
    if isinstance(spec, Map):
        for key, item in value.items():
            if not _leaf_ok(key, spec.key_kind):
                return (*where, key), "is not a prompt length (an integer)"
            if problem := _check(item, spec.item, (*where, key)):
                return problem
        return None
    missing = [k for k in spec.required if k not in value]
    if missing:
        return where, f"lacks '{missing[0]}'"
    for key, item_spec in spec.fields.items():
        if key in value and (problem := _check(value[key], item_spec, (*where, key))):
            return problem
    return None


def _leaf_ok(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "prompt":  # prompt lengths are JSON object keys
        return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind == "int":
        return isinstance(value, int) and abs(value) < MAX_NUMBER
    # Below MAX_NUMBER, sums, ratios and unit conversions of these stay finite floats.
    return abs(value) < MAX_NUMBER  # also false for nan; a huge int must not reach float()


def _expected(kind: str, value: Any) -> str:
    names = {"str": "a string", "int": "an integer", "num": "a finite number", "bool": "a boolean"}
    what = names.get(kind, f"an {kind}")
    return f"must be {what}, not {json_type(value)} {value!r:.40}"


def _dotted(where: Where) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
