"""One row's process: load the model once, then answer generation requests one line at a time.

Run as ``python -m benchmarks.worker '<row spec json>' THREADS MAX_LEN`` by the orchestrator (see
pool.py). Protocol on the original stdout, one JSON object per line: first the load result, then
one reply per request line read from stdin (``{"ids": [...], "max_new": N}`` or
``{"op": "quit"}``). Everything the libraries print, C code included, goes to stderr (fd 1 is
pointed at fd 2), so it cannot corrupt the protocol. The process holds one model, so its peak RSS
(``ru_maxrss``) is that row's.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process image only
    (ru_maxrss would carry over the parent's RSS at fork/exec). Elsewhere: ru_maxrss.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _Recorder:
    """Collects the time each token appeared (perf_counter) and the token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.tokens: list[int] = []

    def stamp(self, token: int) -> None:
        self.stamps.append(time.perf_counter())
        self.tokens.append(token)


def _send(channel: IO[str], data: dict[str, Any]) -> None:
    channel.write(json.dumps(data) + "\n")
    channel.flush()


def _error(exc: BaseException) -> str:
    traceback.print_exc(file=sys.stderr)
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def serve(spec_json: str, threads: int, max_len: int, channel: IO[str]) -> int:
    """Load the row and serve requests from stdin until quit or EOF."""
    from benchmarks import runners
    from benchmarks.workload import RowSpec

    spec = RowSpec.from_json(json.loads(spec_json))
    start = time.perf_counter()
    try:
        runner = runners.load(spec, threads, max_len)
        info = runner.info()
    except Exception as exc:
        _send(channel, {"ok": False, "error": _error(exc)})
        return 1
    load_s = time.perf_counter() - start
    _send(channel, {"ok": True, "load_s": load_s, "rss_bytes": peak_rss_bytes(), "info": info})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        rec = _Recorder()
        t0 = time.perf_counter()
        try:
            extra = runner.run(request["ids"], request["max_new"], rec.stamp)
        except Exception as exc:
            _send(channel, {"ok": False, "error": _error(exc)})
            continue
        reply = {"ok": True, "t0": t0, "stamps": rec.stamps, "tokens": rec.tokens, "extra": extra}
        _send(channel, {**reply, "peak_rss_bytes": peak_rss_bytes()})
    return 0


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), channel)


if __name__ == "__main__":
    sys.exit(main())
