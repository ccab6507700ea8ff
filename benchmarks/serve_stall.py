"""How long one hostile client stalls `edgerun serve` for everyone else: the latency of GET
/health while (1) a ~1 MB prompt is tokenized and (2) a flood of idle sockets is held open at a
low open-file limit; plus the server's log lines and tracebacks during the flood.

    python -m benchmarks.serve_stall out/onnx-fp32 --context 65536 --files 1024 --sockets 1100

The server runs in a subprocess (`python -m edgerun serve`, its open-file limit set to --files);
--context makes even a tiny artifact accept a prompt of context x 16 bytes, so that the prompt is
tokenized rather than refused. Run it from a checkout of another commit to compare (the numbers
in benchmarks/results/serve-stall-*.json name the commit they measured).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS
from benchmarks.machine import describe

_SERVE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({files}, {files}))
from edgerun.cli import main
main(sys.argv[1:])
"""


def poll_health(url: str, stop: threading.Event, timeout: float = 15.0) -> list[float]:
    """Latencies of GET /health, one after another until `stop` (a failure counts as timeout)."""
    import httpx

    out = []
    with httpx.Client(timeout=timeout) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.get(url + "/health").raise_for_status()
                out.append(time.perf_counter() - start)
            except httpx.HTTPError:
                out.append(max(timeout, time.perf_counter() - start))
            time.sleep(0.01)
    return out


def summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "median_s": round(statistics.median(ordered), 4) if ordered else None,
        "max_s": round(ordered[-1], 4) if ordered else None,
    }


def long_prompt(url: str, model: str, size: int) -> dict[str, Any]:
    """/health latencies while one client posts a `size`-byte prompt."""
    import httpx

    prompt = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    stop = threading.Event()
    health: list[float] = []
    poller = threading.Thread(target=lambda: health.extend(poll_health(url, stop)))
    poller.start()
    time.sleep(0.5)
    start = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": 1}
    r = httpx.post(url + "/v1/completions", json=body, timeout=300)
    took = time.perf_counter() - start
    time.sleep(0.5)
    stop.set()
    poller.join()
    return {
        "prompt_bytes": size,
        "status": r.status_code,
        "request_s": round(took, 3),
        "health": summary(health),
    }


def flood(url: str, port: int, sockets: int, hold_s: float) -> dict[str, Any]:
    """/health latencies while `sockets` idle connections are opened and held."""
    held: list[socket.socket] = []
    stop = threading.Event()
    health: list[float] = []
    poller = threading.Thread(target=lambda: health.extend(poll_health(url, stop, 5.0)))
    poller.start()
    refused = 0
    for i in range(sockets):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(b"GET /health HTTP/1.1\r\n" if i % 2 else b"")
            held.append(sock)
        except OSError:
            refused += 1
    time.sleep(hold_s)
    stop.set()
    poller.join()
    for sock in held:
        sock.close()
    return {
        "sockets": sockets,
        "connect_failed": refused,
        "health": summary(health),
        "health_failures": sum(t >= 5.0 for t in health),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--prompt-bytes", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1024)
    parser.add_argument("--sockets", type=int, default=1100)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--profile", default="generic-x86_64")
    parser.add_argument("--label", default="", help="What code this measures (e.g. main).")
    args = parser.parse_args(argv)
    cmd = [
        sys.executable,
        "-c",
        _SERVE.format(files=args.files),
        "serve",
        args.artifact,
        "--port",
        "0",
        "--profile",
        args.profile,
        "--context",
        str(args.context),
        "--drain-timeout",
        "1",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        proc.kill()
        sys.exit(f"the server did not start: {line}")
    url, port = found.group(0), int(found.group(1))
    model = Path(args.artifact).resolve().name
    log: list[str] = []  # read all along: a full pipe would block the server's logging
    reader = threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        results = {"long_prompt": long_prompt(url, model, args.prompt_bytes)}
        results["flood"] = flood(url, port, args.sockets, args.hold)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=30)
    err = "".join(log)
    results["flood"]["log_lines"] = len(err.splitlines())
    results["flood"]["tracebacks"] = err.count("Traceback")
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown"
    record = {
        "benchmark": "serve_stall",
        "commit": commit,
        "machine": describe(),
        "args": vars(args),
        **results,
        "when": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
    }
    print(json.dumps(results, indent=2))
    out = RESULTS / f"serve-stall-{record['when']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
