"""Structured output through `edgerun serve` on the real SmolLM2-135M-Instruct, for onnx-int4 and
gguf-q4_k_m: how many json_schema replies are valid, what the grammar costs per decoded token,
and a tool-call round trip, all through the official openai client.

    python -m benchmarks.serve_structured [--n 100] [--formats onnx-int4,gguf-q4_k_m]

Per artifact: first, in-process on the first --direct requests, the time Model.generate spent in
the masks (GenerationStats.constrain_s) over its generation time; then one `python -m edgerun
serve` subprocess (--threads 2), the tool-call round trip, and for each of --n requests
(benchmarks.structured_cases: 10 schemas x 10 topics, greedy, streamed) the constrained request,
then at once the same messages unconstrained with exactly as many tokens (ignore_eos); decode
tok/s of each is (tokens - 1) / (last chunk - first chunk). The output is checked
by json.loads and an independent schema check. The JSON is rewritten after every request, so
an interrupted run keeps what it measured.
Artifacts: `edgerun export` into benchmarks/work/<model>/structured/ when missing.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS, work_dir
from benchmarks.artifacts import add_artifact_option, given_artifacts
from benchmarks.machine import describe
from benchmarks.serve_overhead import start_server
from benchmarks.structured_cases import requests, validate

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"}},
            "required": ["city"],
        },
    },
}


def artifact(model: str, fmt: str) -> Path:
    """The model's `fmt` artifact, exported once (validation and imatrix as the defaults)."""
    root = work_dir() / model / "structured"
    if not (root / fmt / "edgerun.json").is_file():
        cmd = [sys.executable, "-m", "edgerun", "export", model, "-f", fmt, "-o", str(root)]
        subprocess.run(cmd, check=True)
    return root / fmt


def chat(client: Any, messages: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """One streamed chat request: text, finish reason, tokens, decode tok/s."""
    start, stamps, text, usage, finish = time.perf_counter(), [], [], None, None
    stream = client.chat.completions.create(
        model="bench",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    for event in stream:
        if event.usage:
            usage = event.usage
        if event.choices:
            finish = event.choices[0].finish_reason or finish
            if event.choices[0].delta.content:
                stamps.append(time.perf_counter())
                text.append(event.choices[0].delta.content)
    tokens = usage.completion_tokens if usage else len(stamps)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return {
        "text": "".join(text),
        "finish": finish,
        "tokens": tokens,
        "ttft_s": stamps[0] - start if stamps else None,
        "decode_tok_s": (tokens - 1) / span if span > 0 else None,
    }


def one_request(
    client: Any, case: tuple[str, dict[str, Any], str], max_tokens: int
) -> dict[str, Any]:
    name, schema, prompt = case
    messages = [{"role": "user", "content": prompt}]
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}

    def constrained() -> dict[str, Any]:
        return chat(client, messages, response_format=fmt, max_tokens=max_tokens)

    def free(tokens: int) -> dict[str, Any]:
        return chat(client, messages, max_tokens=max(tokens, 2), extra_body={"ignore_eos": True})

    c = constrained()
    f = free(c["tokens"])  # right after, the same number of tokens
    try:
        value, parsed = json.loads(c["text"]), True
    except ValueError:
        value, parsed = None, False
    return {
        "schema": name,
        "finish": c["finish"],
        "tokens": c["tokens"],
        "parses": parsed,
        "valid": parsed and validate(value, schema),
        "decode_tok_s": c["decode_tok_s"],
        "free_decode_tok_s": f["decode_tok_s"],
        "ratio": c["decode_tok_s"] / f["decode_tok_s"]
        if c["decode_tok_s"] and f["decode_tok_s"]
        else None,
        "text": c["text"][:400],
    }


def round_trip(client: Any) -> dict[str, Any]:
    """get_weather called (tool_choice required), the result sent back, the final answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.chat.completions.create(
        model="bench", messages=messages, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=128,
    )  # fmt: skip
    message = first.choices[0].message
    out: dict[str, Any] = {"finish_1": first.choices[0].finish_reason}
    out["tool_calls"] = [c.model_dump() for c in message.tool_calls or []]
    if not message.tool_calls:
        return {**out, "ok": False}
    call = message.tool_calls[0]
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18, "sky": "sunny"}'}
    messages += [message.model_dump(exclude_none=True), result]
    second = client.chat.completions.create(
        model="bench", messages=messages, tools=[WEATHER], tool_choice="none", temperature=0,
        max_tokens=48,
    )  # fmt: skip
    auto = client.chat.completions.create(
        model="bench", messages=messages[:1], tools=[WEATHER], temperature=0, max_tokens=128
    )
    out.update(
        finish_2=second.choices[0].finish_reason,
        answer=second.choices[0].message.content,
        auto_finish=auto.choices[0].finish_reason,
        auto_calls=len(auto.choices[0].message.tool_calls or []),
        ok=call.function.name == "get_weather" and "city" in json.loads(call.function.arguments),
    )
    return out


def direct(path: Path, cases: list[Any], max_tokens: int) -> dict[str, Any]:
    """In-process: the share of generation time spent in the grammar masks."""
    import edgerun
    from edgerun.text import constrain

    shares, per_token_us, steered = [], [], 0
    with edgerun.load(path, threads=2) as model:  # the server's threads
        for name, schema, prompt in cases:
            ids = model.tokenizer.encode_chat([{"role": "user", "content": prompt}])
            grammar = constrain.json_schema(schema, name)
            for _ in model.generate(ids, max_tokens=max_tokens, grammar=grammar):
                pass
            s = model.last_stats
            spent = s.decode_s + (s.ttft_s or 0.0)
            shares.append(s.constrain_s / spent)
            per_token_us.append(1e6 * s.constrain_s / max(s.generated_tokens, 1))
            steered += s.steered
    return {
        "requests": len(cases),
        "steered_to_end": steered,  # replies that reached the grammar's reserve (json_close)
        "mask_share_median": statistics.median(shares),
        "mask_us_per_token_median": statistics.median(per_token_us),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    return {
        "requests": len(rows),
        "valid": sum(r["valid"] for r in rows),
        "parses": sum(r["parses"] for r in rows),
        "finish": {f: sum(r["finish"] == f for r in rows) for f in {r["finish"] for r in rows}},
        "tokens_median": statistics.median(r["tokens"] for r in rows),
        "decode_ratio_median": statistics.median(ratios) if ratios else None,
        "decode_overhead_pct": 100 * (1 - statistics.median(ratios)) if ratios else None,
        "decode_tok_s_median": statistics.median(r["decode_tok_s"] or 0 for r in rows),
        "free_decode_tok_s_median": statistics.median(r["free_decode_tok_s"] or 0 for r in rows),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="onnx-int4,gguf-q4_k_m")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--direct", type=int, default=20, help="requests of the in-process pass")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    add_artifact_option(ap)
    args = ap.parse_args(argv)
    import openai

    started, results = time.perf_counter(), {}
    cases = requests(args.n)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"serve-structured-{stamp}.json"
    given = given_artifacts(args.artifact)
    for fmt in args.formats.split(","):
        path = given.get(fmt) or artifact(args.model, fmt)
        result = results[fmt] = {"direct": direct(path, cases[: args.direct], args.max_tokens)}
        proc, base = start_server(path, None, args.threads, 1)
        # the request log goes to stderr: keep the pipe empty or the server blocks on it
        assert proc.stderr is not None
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key="-", timeout=600, max_retries=0)
            result["tool_round_trip"] = round_trip(client)
            rows = result["rows"] = []
            for case in cases:  # written after every request: an interrupted run keeps its rows
                rows.append(one_request(client, case, args.max_tokens))
                result["summary"] = summary(rows)
                save(out, args, argv, started, results)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(fmt, json.dumps(result["summary"]), json.dumps(result["direct"]))
    print(f"results: {out}")


def save(
    out: Path,
    args: Any,
    argv: list[str] | None,
    started: float,
    results: dict[str, Any],
    script: str = "serve_structured",
) -> None:
    """Write the results JSON of benchmarks.`script` (this one's, or serve_tool_calls')."""
    payload = {
        "schema": f"edgerun-{script.replace('_', '-')}/1",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m benchmarks.{script}", *(argv or sys.argv[1:])]),
        **({"label": args.label} if getattr(args, "label", "") else {}),
        "wall_s": time.perf_counter() - started,
        "workload": {
            "model": args.model,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "greedy": True,
        },
        "machine": describe(),
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
