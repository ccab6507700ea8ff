"""A small declarative schema for profile TOML files, and a line finder so that every error names
the file, the key and the line it is on.

The schema is data (``Table`` / ``ListOf`` / ``OneOf`` / ``Options`` / plain types), checked by
one recursive function; tomllib gives us the values but not their positions, so
:func:`key_lines` scans the source text for table headers and ``key =`` lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Path_ = tuple[str | int, ...]
SCALARS = (str, int, float, bool)


class SchemaError(Exception):
    """A value at `path` (keys and array indexes) breaks the schema."""

    def __init__(self, path: Path_, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Table:
    """A TOML table with known keys; any other key is an error."""

    fields: dict[str, Any]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListOf:
    """An array whose items all follow `item`."""

    item: Any


@dataclass(frozen=True)
class OneOf:
    """A string from a fixed set."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Either:
    """A value matching any of `options` (e.g. an int or the string "auto")."""

    options: tuple[Any, ...]


@dataclass(frozen=True)
class Options:
    """A free-form table of scalars, arrays of scalars, and tables of those one level deep
    (provider and backend options, whose names belong to the library that reads them)."""

    note: str = field(default="options")


def describe(spec: Any) -> str:
    """A short human name of what `spec` accepts, for error messages."""
    if isinstance(spec, type):
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[spec]
    if isinstance(spec, ListOf):
        inner = describe(spec.item).removeprefix("a ").removeprefix("an ")
        return "an array of tables" if isinstance(spec.item, Table) else f"an array of {inner}s"
    if isinstance(spec, OneOf):
        return "one of " + ", ".join(repr(v) for v in spec.values)
    if isinstance(spec, Either):
        return " or ".join(describe(o) for o in spec.options)
    return "a table"


def _type_name(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    names.update({list: "array", dict: "table"})
    return names.get(type(value), type(value).__name__)


def check(value: Any, spec: Any, path: Path_ = ()) -> None:
    """Raise SchemaError at the first place where `value` does not follow `spec`."""
    if isinstance(spec, Table):
        _check_table(value, spec, path)
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise SchemaError(path, f"expected {describe(spec)}, got {_type_name(value)}")
        for i, item in enumerate(value):
            check(item, spec.item, (*path, i))
    elif isinstance(spec, OneOf):
        if value not in spec.values:
            raise SchemaError(path, f"expected {describe(spec)}, got {value!r}")
    elif isinstance(spec, Either):
        for option in spec.options:
            try:
                check(value, option, path)
                return
            except SchemaError:
                continue
        raise SchemaError(path, f"expected {describe(spec)}, got {value!r}")
    elif isinstance(spec, Options):
        _check_options(value, path)
    elif not _is_instance(value, spec):
        raise SchemaError(path, f"expected {describe(spec)}, got {_type_name(value)} {value!r}")


def _is_instance(value: Any, spec: type) -> bool:
    if spec is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec)


def _check_table(value: Any, spec: Table, path: Path_) -> None:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a table, got {_type_name(value)}")
    for key in value:
        if key not in spec.fields:
            allowed = ", ".join(spec.fields)
            raise SchemaError((*path, key), f"unknown key (allowed here: {allowed})")
    for key in spec.required:
        if key not in value:
            raise SchemaError(path, f"missing required key '{key}'")
    for key, item in value.items():
        check(item, spec.fields[key], (*path, key))


def _check_options(value: Any, path: Path_, nested: bool = True) -> None:
    """Scalars, arrays of scalars, and (one level down) tables of those, e.g. session_config."""
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a table, got {_type_name(value)}")
    for key, item in value.items():
        if isinstance(item, dict) and nested:
            _check_options(item, (*path, key), nested=False)
            continue
        items = item if isinstance(item, list) else [item]
        if not all(isinstance(i, SCALARS) for i in items):
            raise SchemaError((*path, key), "expected a string, number, boolean or array of them")


# ---- where is a key? ---------------------------------------------------------------------------

_PART = r'[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\''
_KEY_RE = re.compile(rf"^((?:{_PART})(?:\s*\.\s*(?:{_PART}))*)\s*=")


def _split(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in re.findall(_PART, dotted)]


def key_lines(text: str) -> dict[Path_, int]:
    """Map every table header and ``key =`` line of a TOML text to its 1-based line number.

    Paths carry array-of-tables indexes, as :func:`check` reports them: ``("backends", 0,
    "providers", 1, "name")``. Keys inside inline tables are not indexed; :func:`line_of` falls
    back to the enclosing key.
    """
    index: dict[Path_, int] = {}
    counts: dict[Path_, int] = {}
    current: Path_ = ()
    in_multiline = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        was_multiline = in_multiline
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_multiline = not in_multiline
        if was_multiline or not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            names = _split(line[2 : line.find("]]")])
            array = (*_resolve(names[:-1], counts), names[-1])
            counts[array] = counts.get(array, -1) + 1
            current = (*array, counts[array])
        elif line.startswith("["):
            current = _resolve(_split(line[1 : line.find("]")]), counts)
        else:
            match = _KEY_RE.match(line)
            if not match:
                continue
            index.setdefault((*current, *_split(match.group(1))), number)
            continue
        index.setdefault(current, number)
    return index


def _resolve(names: list[str], counts: dict[Path_, int]) -> Path_:
    """Header names -> a path, entering the latest element of every array of tables on the way."""
    path: Path_ = ()
    for name in names:
        path = (*path, name)
        if path in counts:
            path = (*path, counts[path])
    return path


def line_of(text: str, path: Path_) -> int:
    """The line of `path` in `text`, or of its nearest enclosing key or table (1 if none)."""
    index = key_lines(text)
    for end in range(len(path), 0, -1):
        if path[:end] in index:
            return index[path[:end]]
    return 1


def dotted(path: Path_) -> str:
    """("backends", 0, "name") -> "backends[0].name"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
