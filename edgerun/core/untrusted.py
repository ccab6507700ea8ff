"""Reading files that come from elsewhere: bounded JSON, and paths kept inside their directory.

Manifests, bench results, cache markers and checkpoint configs are copied between machines and
labs, so they are data of unknown origin. Everything here turns a bad file into one
EdgerunError line (never a traceback) and never reads or follows a path out of its directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgerun.core.errors import EdgerunError

#: Larger JSON side files than this are refused unread (a manifest is a few KiB).
MAX_JSON_BYTES = 64 << 20


def read_json(path: Path, hint: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in `path`; EdgerunError (with `hint`) when it is missing, unreadable, too
    large, not UTF-8, not JSON, or nested too deeply to parse."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise EdgerunError(f"{path} is {size} bytes, too large for a JSON side file", hint)
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except FileNotFoundError as exc:
        raise EdgerunError(f"{path} does not exist", hint) from exc
    except UnicodeDecodeError as exc:
        raise EdgerunError(f"{path} is not UTF-8 text (byte {exc.start})", hint) from exc
    except json.JSONDecodeError as exc:
        raise EdgerunError(f"{path} is not valid JSON ({exc.msg})", hint) from exc
    except (ValueError, RecursionError) as exc:  # an int of 5000 digits; [[[[... 100000 deep
        raise EdgerunError(
            f"{path} is not JSON edgerun can read ({type(exc).__name__})", hint
        ) from exc
    except OSError as exc:
        raise EdgerunError(f"cannot read {path}: {exc.strerror or exc}", hint) from exc


def read_json_object(path: Path, hint: str) -> dict[str, Any]:
    """read_json, and the value must be a JSON object."""
    data = read_json(path, hint)
    if not isinstance(data, dict):
        raise EdgerunError(f"{path} holds a JSON {json_type(data)}, not an object", hint)
    return data


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: object, array, string, number, boolean, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {dict: "object", list: "array", str: "string"}
    return names.get(type(value), type(value).__name__)


def contained(root: Path, name: Any, what: str, hint: str) -> Path:
    """`root / name`, refused (EdgerunError) unless `name` is a relative path that stays inside
    `root` after '..' and symbolic links are resolved."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise EdgerunError(f"{what} {name!r} is not a file name", hint)
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise EdgerunError(f"{what} {name!r} points outside {root}", hint)
    path = Path(root) / name
    try:
        inside = path.resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise EdgerunError(f"{what} {name!r} cannot be resolved: {exc}", hint) from exc
    if not inside:
        raise EdgerunError(f"{what} {name!r} points outside {root} (symbolic link)", hint)
    return path


def is_int(value: Any, low: int = 0) -> bool:
    """A JSON integer (not a boolean) of at least `low`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean) that converts to a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 1e300  # false for inf and nan, and for ints too large for a float


def check_fields(
    data: dict[str, Any],
    checks: dict[str, tuple[Callable[[Any], bool], str]],
    fail: Callable[[str], EdgerunError],
) -> None:
    """Raise fail(message) for the first key of `checks` present in `data` whose value fails its
    test; the second item of each check says what was expected."""
    for key, (test, expected) in checks.items():
        if key in data and not test(data[key]):
            raise fail(f"'{key}' must be {expected}, not {json_type(data[key])} {data[key]!r:.40}")


def is_loopback(host: str) -> bool:
    """`host` (an address from the command line) is this machine's loopback: 127.0.0.0/8, ::1
    or localhost. A server bound elsewhere is reachable by others."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
