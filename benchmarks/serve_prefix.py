"""Prefix KV reuse in `edgerun serve` (issue 27): TTFT of a follow-up chat turn with a ~1k-token
shared prefix, prompt cache on against off, on SmolLM2-135M-Instruct onnx-int4 and gguf-q4_k_m.

    .venv/bin/python -m benchmarks.serve_prefix            # both formats, 3 conversations
    .venv/bin/python -m benchmarks.serve_prefix --formats gguf-q4_k_m --conversations 1

Per format, two servers run side by side (`python -m edgerun serve`, subprocesses): one with
`--prompt-cache-mb N`, one with `--prompt-cache-mb 0`. A conversation is a ~1k-token system prompt
(benchmarks/prompt.txt) and --turns short user messages; every turn is sent to the cold server
and then to the warm one with the same messages (the history holds the warm server's replies;
greedy, so the cold replies are the same text, which is checked). TTFT is measured by the client:
from sending the request to the first server-sent event, which the server sends once the first
token exists. The ratio is warm / cold per turn; the first turn of the first conversation is a
miss on both, the first turn of a later conversation shares only the system prompt. The cache's
bytes and bound are read from /metrics after each turn, the servers' RSS at the end. Artifacts
are exported once under benchmarks/work/ (benchmarks.artifacts.Prep).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS, ROOT, model_key, work_dir
from benchmarks.artifacts import add_artifact_option, given_artifacts
from benchmarks.machine import describe

USER_TURNS = [
    "Summarise the text above in one sentence.",
    "Which part of it matters most for a small device?",
    "Say that again, more briefly.",
    "Give it a short title.",
    "Thank you. Anything else to add?",
]


def start_server(
    artifact: Path, cache_mb: float, threads: int
) -> tuple[subprocess.Popen[str], str]:
    """`edgerun serve ARTIFACT --port 0` in a subprocess; its base URL once it listens."""
    cmd = [sys.executable, "-m", "edgerun", "serve", str(artifact), "--port", "0"]
    cmd += ["--prompt-cache-mb", str(cache_mb), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for _ in range(40):  # warnings may come before the address line
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            drain = threading.Thread(target=lambda: proc.stderr and proc.stderr.read(), daemon=True)
            drain.start()  # the request log goes to stderr: keep the pipe empty
            return proc, found.group(0)
        if not line:
            break
    proc.kill()
    raise SystemExit(f"the server for {artifact} did not start")


def chat_turn(
    url: str, model: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    """One streamed greedy chat request: client-side TTFT, total time, text, usage."""
    import httpx

    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, text, usage = time.perf_counter(), None, [], {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            first = first or time.perf_counter()
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            elif event["choices"]:
                text.append(event["choices"][0]["delta"].get("content") or "")
    end = time.perf_counter()
    return {
        "ttft_s": (first or end) - start,
        "total_s": end - start,
        "text": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
    }


def cache_gauges(url: str, model: str) -> dict[str, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for key, name in (
        ("bytes", "edgerun_prompt_cache_bytes"),
        ("limit", "edgerun_prompt_cache_limit_bytes"),
    ):
        found = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
        out[key] = float(found.group(1)) if found else float("nan")
    return out


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def system_prompt(tokens: int) -> str:
    """About `tokens` tokens of benchmarks/prompt.txt (4 characters a token, SmolLM2-ish)."""
    text = (ROOT / "prompt.txt").read_text(encoding="utf-8")
    while len(text) < tokens * 4:
        text += "\n" + text
    return "Answer questions about this text.\n\n" + text[: tokens * 4]


def run_format(artifact: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every conversation through the cold and the warm server of `artifact`."""
    warm, warm_url = start_server(artifact, args.cache_mb, args.threads)
    cold, cold_url = start_server(artifact, 0, args.threads)
    model = artifact.resolve().name
    turns: list[dict[str, Any]] = []
    try:
        system = system_prompt(args.prefix_tokens)
        chat_turn(warm_url, model, [{"role": "user", "content": "hi"}], 2)  # warm-up both
        chat_turn(cold_url, model, [{"role": "user", "content": "hi"}], 2)
        for conv in range(args.conversations):
            messages = [{"role": "system", "content": system}]
            for turn in range(args.turns):
                question = USER_TURNS[(turn + conv) % len(USER_TURNS)]
                messages.append({"role": "user", "content": question})
                c = chat_turn(cold_url, model, messages, args.max_tokens)
                w = chat_turn(warm_url, model, messages, args.max_tokens)
                gauges = cache_gauges(warm_url, model)
                row = {"conversation": conv, "turn": turn, "cold": c, "warm": w, "cache": gauges}
                row["ratio"] = w["ttft_s"] / c["ttft_s"]
                row["same_text"] = w["text"] == c["text"]
                turns.append(row)
                print(
                    f"{artifact.name} conv {conv} turn {turn}: prompt {w['prompt_tokens']} tok"
                    f" ({w['cached_tokens']} cached) ttft cold {c['ttft_s'] * 1000:.0f} ms,"
                    f" warm {w['ttft_s'] * 1000:.0f} ms = {row['ratio']:.1%};"
                    f" cache {gauges['bytes'] / 2**20:.1f} / {gauges['limit'] / 2**20:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
                messages.append({"role": "assistant", "content": w["text"]})
        rss = {"warm_mb": rss_mb(warm.pid), "cold_mb": rss_mb(cold.pid)}
    finally:
        for proc in (warm, cold):
            proc.terminate()
            proc.wait(timeout=60)
    follow = [t["ratio"] for t in turns if t["turn"] > 0]
    return {
        "artifact": str(artifact),
        "turns": turns,
        "follow_up_ratio_median": statistics.median(follow) if follow else None,
        "follow_up_ratio_max": max(follow) if follow else None,
        "cold_ttft_median_s": statistics.median(t["cold"]["ttft_s"] for t in turns),
        "cache_bytes_max": max(t["cache"]["bytes"] for t in turns),
        "cache_limit": turns[-1]["cache"]["limit"] if turns else None,
        "within_bound": all(t["cache"]["bytes"] <= t["cache"]["limit"] for t in turns),
        "same_text": all(t["same_text"] for t in turns),
        "rss": rss,
    }


def artifacts(formats: list[str]) -> dict[str, Path]:
    """edgerun's exports of SmolLM2-135M-Instruct in `formats`, built once (Prep)."""
    if not formats:
        return {}
    from benchmarks.artifacts import Prep
    from edgerun.sources.resolve import resolve

    prep = Prep(
        checkpoint=resolve("smollm2-135m").path, work=work_dir() / model_key("smollm2-135m")
    )
    prep.prebuild_edgerun(formats)
    return {fmt: prep.edgerun(fmt) for fmt in formats}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="onnx-int4,gguf-q4_k_m")
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--cache-mb", type=float, default=128)
    parser.add_argument("--threads", type=int, default=2)
    add_artifact_option(parser)
    args = parser.parse_args(argv)
    given = given_artifacts(args.artifact)
    formats = args.formats.split(",")
    paths = {**artifacts([f for f in formats if f not in given]), **given}
    git = ["git", "rev-parse", "--short", "HEAD"]
    when = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {}
    record = {
        "benchmark": "serve_prefix",
        "commit": subprocess.run(git, capture_output=True, text=True).stdout.strip() or "unknown",
        "machine": describe(),
        "args": vars(args),
        "results": results,
        "when": when,
    }
    out = RESULTS / f"serve-prefix-{when}.json"
    for fmt in formats:  # written after each format: a run cut short keeps what it measured
        results[fmt] = run_format(paths[fmt], args)
        out.write_text(json.dumps(record, indent=2) + "\n")
    for fmt, res in results.items():
        print(
            f"{fmt}: follow-up TTFT {res['follow_up_ratio_median']:.1%} of cold (max"
            f" {res['follow_up_ratio_max']:.1%}), cold {res['cold_ttft_median_s'] * 1000:.0f} ms;"
            f" cache at most {res['cache_bytes_max'] / 2**20:.1f} MiB of"
            f" {res['cache_limit'] / 2**20:.0f} MiB; same text: {res['same_text']}"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
