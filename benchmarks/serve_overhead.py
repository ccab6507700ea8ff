"""What `edgerun serve` costs a client: TTFT and decode tok/s seen over HTTP (server-sent events)
against `edgerun.load(...).generate` in-process on the same artifact, prompt ids and settings.

    python -m benchmarks.serve_overhead out/onnx-int4 --streams 4 --rounds 5

The server runs in a subprocess (`python -m edgerun serve`), the client here; rounds interleave
in-process and server runs, and the summary gives medians. With N streams the server still runs
one generation at a time, so a stream's TTFT includes its wait in the queue: TTFTs are counted
from the start of the batch, for N in-process generations back to back as for N streams, and the
aggregate tok/s is all tokens over the batch's wall time. Greedy, end of
sequence ignored, so every run generates exactly --gen-tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS
from benchmarks.machine import describe
from benchmarks.workload import ids_digest, prompt_ids
from edgerun.bench.metrics import rep_metrics


def in_process(model: Any, ids: list[int], gen: int) -> dict[str, Any]:
    """One generation through the library: TTFT from the call, decode over the later tokens."""
    start = time.perf_counter()
    stamps = [
        time.perf_counter()
        for chunk in model.generate(ids, max_tokens=gen, ignore_eos=True)
        if chunk.token_id is not None
    ]
    row = rep_metrics(start, stamps, len(ids))
    return {"start": start, **row, "n_tokens": len(stamps), "end": stamps[-1]}


async def one_stream(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion: stamps of the text events, tokens from the usage event."""
    start, stamps, usage = time.perf_counter(), [], None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            elif event["choices"] and event["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    n = usage["completion_tokens"] if usage else len(stamps)
    row = rep_metrics(start, stamps, len(body["prompt"]))
    decode_s = stamps[-1] - stamps[0]
    # Empty-text tokens (a character split over tokens) send no event: count tokens from usage.
    row["decode_tok_s"] = (n - 1) / decode_s if decode_s > 0 else None
    return {"start": start, **row, "n_tokens": n, "end": stamps[-1]}


async def server_round(base: str, ids: list[int], gen: int, streams: int) -> list[dict[str, Any]]:
    import httpx

    body = {
        "model": "bench",
        "prompt": ids,
        "max_tokens": gen,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams)) as c:
        url = base + "/v1/completions"
        return list(await asyncio.gather(*(one_stream(c, url, body) for _ in range(streams))))


def aggregate(runs: list[dict[str, Any]], path: str, streams: int) -> dict[str, Any]:
    """One round's row: first/median TTFT, per-stream decode, tokens over wall time."""
    t0 = min(r["start"] for r in runs)
    wall = max(r["end"] for r in runs) - t0
    # From the batch's start: a queued stream's wait counts, as does a back-to-back run's.
    ttfts = [r["start"] + r["ttft_s"] - t0 for r in runs]
    return {
        "path": path,
        "streams": streams,
        "ttft_s_first": min(ttfts),
        "ttft_s_median": statistics.median(ttfts),
        "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in runs),
        "aggregate_tok_s": sum(r["n_tokens"] for r in runs) / wall,
        "n_tokens": [r["n_tokens"] for r in runs],
    }


def start_server(artifact: Path, profile: str | None, threads: int | None, streams: int) -> Any:
    cmd = [sys.executable, "-m", "edgerun", "serve", f"bench={artifact}", "--port", "0"]
    cmd += ["--prompt-cache-mb", "0"]  # the rounds repeat one prompt: time its prefill
    cmd += ["--max-queue", str(streams)]
    cmd += ["--profile", profile] if profile else []
    cmd += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for _ in range(20):  # the warning lines, then the address
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            return proc, found.group(0)
        if not line:
            break
    proc.kill()
    raise SystemExit(f"the server did not start: {line.strip()}")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per (path, streams), and server / in-process ratios."""
    out: dict[str, Any] = {}
    for key in sorted({(r["path"], r["streams"]) for r in rows}):
        group = [r for r in rows if (r["path"], r["streams"]) == key]
        out[f"{key[0]}-{key[1]}"] = {
            k: statistics.median(r[k] for r in group)
            for k in ("ttft_s_first", "ttft_s_median", "decode_tok_s_median", "aggregate_tok_s")
        }
    for n in sorted({r["streams"] for r in rows}):
        s, p = out.get(f"server-{n}"), out.get(f"in-process-{n}")
        if s and p:
            out[f"overhead-{n}"] = {
                "ttft_ms_added": 1000 * (s["ttft_s_first"] - p["ttft_s_first"]),
                "decode_ratio": s["decode_tok_s_median"] / p["decode_tok_s_median"],
                "aggregate_ratio": s["aggregate_tok_s"] / p["aggregate_tok_s"],
            }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", type=float, default=0.5, help="idle seconds before each run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import edgerun

    ids = prompt_ids(args.artifact / "tokenizer.json", args.prompt_tokens, seed=0)
    proc, base = start_server(args.artifact, args.profile, args.threads, args.streams)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with edgerun.load(
            args.artifact, args.profile, threads=args.threads, prompt_cache_mb=0
        ) as model:
            info = model.info.to_json()
            info.pop("manifest", None)
            in_process(model, ids, 8)  # warm-up, both sides
            asyncio.run(server_round(base, ids, 8, 1))
            for i in range(args.rounds):
                for n in (1, args.streams):
                    for path in ("in-process", "server")[:: 1 if i % 2 else -1]:
                        time.sleep(args.settle)  # let the other process's threads go idle
                        if path == "server":
                            runs = asyncio.run(server_round(base, ids, args.gen_tokens, n))
                        else:
                            runs = [in_process(model, ids, args.gen_tokens) for _ in range(n)]
                        rows.append({"round": i, **aggregate(runs, path, n)})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    result = {
        "schema": "edgerun-serve-overhead/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.serve_overhead", *(argv or sys.argv[1:])]),
        "wall_s": time.perf_counter() - started,
        "workload": {
            "artifact": str(args.artifact),
            "prompt_tokens": args.prompt_tokens,
            "prompt_digest": ids_digest(ids),
            "gen_tokens": args.gen_tokens,
            "streams": args.streams,
            "rounds": args.rounds,
            "settle_s": args.settle,
            "greedy": True,
        },
        "model": info,
        "machine": describe(),
        "rows": rows,
        "summary": summarize(rows),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"serve-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
