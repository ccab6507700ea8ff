"""The lab host's side of the trust boundary with devices: it reads plain data, never objects.

Dask sends Python objects between nodes as pickles, and unpickling runs code chosen by the
sender. The host (the process of `lab devices` / `lab bench`) sends code to devices by design,
but a device must never run code on the host. Dask has no allow-list that covers everything a
client unpickles (its ``deserializers`` option leaves out pickles inside messages, task error
payloads, result types and the ``warn`` event topic), so the host:

- replaces Dask's unpickler (``distributed.protocol.pickle.loads``, and the copy
  ``distributed.client`` holds) with one that refuses every global but ``bytes`` (Python's
  "restricting globals" recipe): plain data (dict, list, tuple, str, bytes, numbers, booleans,
  None) still loads, a class, function or ``__reduce__`` payload raises RefusedPickle, and an
  error a peer sends (always a pickled exception) is read as "refused";
- connects with HostClient, which never subscribes to Dask's ``print``/``warn`` topics (their
  handlers print or unpickle what any node sends);
- calls every device function through edgerun.lab.remote.call, so an answer is a plain
  ``{"value": ...}`` or ``{"error": ...}``, and checks it (`unwrap`, `plain`) before use.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import pickle
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import check_fields, is_int

#: A device's answer larger than this (as JSON) is refused: a bench run is tens of KiB.
MAX_ANSWER_BYTES = 8 << 20
HINT = "devices send plain data only: check the device runs an unmodified edgerun"


class RefusedPickle(pickle.UnpicklingError, TypeError):
    """A pickle from the network names a global (code); the lab host refuses to load it."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "bytes"):  # the type tag of Dask's bytes payloads
            return bytes
        raise RefusedPickle(
            f"refused a pickled {module}.{name}: the lab host loads plain data only"[:200]
        )


def plain_loads(data: Any, *, buffers: Any = ()) -> Any:
    """pickle.loads for data from the network: plain values load, any global is refused."""
    return _PlainUnpickler(io.BytesIO(bytes(data)), buffers=buffers or None).load()


# The client's record when its scheduler stays gone (after its reconnect timeout, 10 s): on a
# busy machine it can come before the lab's own per-device report of the same loss.
LOST_SCHEDULER = "Failed to reconnect to scheduler"


class _OneLineLogs(logging.Filter):
    """Dask's log records on the lab host as one line each, without tracebacks: a refused
    pickle is dropped (the lab reports it with the device), any other error is shortened to
    its type and first line (a lost scheduler, for one, is reported by the lab itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (RefusedPickle, asyncio.CancelledError)):  # reported, or no error
            return False
        if str(record.msg).startswith(LOST_SCHEDULER):  # the lab says so, per device
            return False
        if exc is not None:
            first = (str(exc).splitlines() or [""])[0][:200]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {first})".strip()
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_installed: list[bool] = []


def install() -> None:
    """Make this process load only plain data from Dask peers, and log Dask's errors on one
    line (idempotent)."""
    if _installed:
        return
    import distributed.client
    import distributed.protocol.pickle

    distributed.protocol.pickle.loads = plain_loads
    distributed.client.loads = plain_loads  # type: ignore[attr-defined]
    seen: set[int] = set()
    for name in ("distributed", "distributed.client", ""):  # Dask's own handlers, and root's
        for handler in logging.getLogger(name).handlers:
            if id(handler) not in seen:
                seen.add(id(handler))
                handler.addFilter(_OneLineLogs())
    _installed.append(True)


def host_client_class() -> Any:
    """distributed.Client without the default ``print``/``warn`` event handlers."""
    from distributed import Client

    class HostClient(Client):  # type: ignore[misc]
        def subscribe_topic(self, topic: str, handler: Any) -> None:
            if topic in ("print", "warn"):  # Dask's handlers print or unpickle what nodes send
                return
            super().subscribe_topic(topic, handler)

    return HostClient


def refusal(exc: BaseException) -> str | None:
    """The one-line reason when `exc` (raised by a Dask call) is a refused or unreadable
    payload from a device, else None."""
    if isinstance(exc, RefusedPickle):
        return str(exc)
    args = getattr(exc, "args", ())
    if type(exc) is Exception and args and isinstance(args[0], (bytes, bytearray)):
        return "sent an error the lab host refuses to unpickle (it loads plain data only)"
    return None


def plain(value: Any, what: str, max_bytes: int = MAX_ANSWER_BYTES) -> Any:
    """`value` as pure JSON data (tuples become lists); EdgerunError when it is not JSON-able,
    not finite, or larger than `max_bytes` as JSON."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise EdgerunError(f"{what} is not plain data ({type(exc).__name__})", HINT) from exc
    if len(text) > max_bytes:
        raise EdgerunError(f"{what} is {len(text)} bytes, over {max_bytes}", HINT)
    return json.loads(text)


def unwrap(answer: Any, what: str) -> Any:
    """The value of a device's answer from edgerun.lab.remote.call; EdgerunError with the
    device's own message when it reports an error, or when the answer is malformed."""
    answer = plain(answer, what)
    if isinstance(answer, dict) and set(answer) == {"value"}:
        return answer["value"]
    if isinstance(answer, dict) and set(answer) == {"error", "hint"}:
        error, hint = answer["error"], answer["hint"]
        if isinstance(error, str) and isinstance(hint, (str, type(None))):
            raise EdgerunError(error[:500].replace("\n", " "), (hint or "")[:300] or None)
    raise EdgerunError(f"{what} is not an answer of edgerun.lab.remote.call", HINT)


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (str, type(None))) for k, v in value.items()
    )


_OPT_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
_OPT_INT = (lambda v: v is None or is_int(v), "an integer or null")
_AD_FIELDS: dict[str, tuple[Any, str]] = {
    "profile": _OPT_STR,
    "cpu": _OPT_STR,
    "arch": _OPT_STR,
    "os": _OPT_STR,
    "cores": _OPT_INT,
    "ram_bytes": _OPT_INT,
    "accelerators": (
        lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v),
        "a list of strings",
    ),  # fmt: skip
    "libraries": (_str_map, "an object of version strings"),
    "installed": (_str_map, "an object of version strings"),
    "posing": (lambda v: isinstance(v, bool), "a boolean"),
    "fingerprint": (lambda v: isinstance(v, dict), "an object"),
}


def check_advertisement(answer: Any, name: str) -> dict[str, Any]:
    """A device's advertisement (edgerun.lab.device.advertise, answered through
    edgerun.lab.remote.call) checked field by field; its id must be its worker's `name`."""
    ad = unwrap(answer, f"device {name}'s advertisement")

    def fail(message: str) -> EdgerunError:
        return EdgerunError(f"device {name}'s advertisement: {message}", HINT)

    if not isinstance(ad, dict):
        raise fail("is not an object")
    if ad.get("id") != name:
        raise fail(f"names device {ad.get('id')!r:.60}, not its worker's name")
    missing = [k for k in _AD_FIELDS if k not in ad]
    if missing:
        raise fail(f"lacks '{missing[0]}'")
    check_fields(ad, _AD_FIELDS, fail)
    return ad


def check_run(answer: Any, device_id: str) -> dict[str, Any]:
    """A device's bench run (edgerun.lab.remote.bench_on_device via call), checked against the
    results shape (edgerun.bench.results_check)."""
    from edgerun.bench.results_check import check_results

    run = unwrap(answer, f"device {device_id}'s bench run")
    check_results({"runs": [run]}, f"device {device_id}'s bench run")
    return dict(run)
