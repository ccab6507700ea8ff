"""Tool calls cut short by max_tokens, through `edgerun serve` and the official openai client:
of N chat requests whose tools take varied parameter schemas, how many return tool calls whose
`arguments` parse and validate against the called function's parameters.

    python -m benchmarks.serve_tool_calls --artifact onnx-int4=PATH [--n 30] [--max-tokens 48]

Request i offers two tools, record_<schema> built from benchmarks.structured_cases' schema i
(10 schemas) and the next schema's as a second choice, and asks with that schema's prompt;
tool_choice cycles through "required", the named function and "auto". Greedy, not streamed,
one `python -m edgerun serve` subprocess per artifact. Run it from a checkout of the code to
measure (the server is `python -m edgerun` from the current directory): the README compares
main's (no closing for tool calls) with the steered one. The JSON is rewritten after every
request, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import RESULTS
from benchmarks.artifacts import add_artifact_option, given_artifacts
from benchmarks.serve_overhead import start_server
from benchmarks.serve_structured import artifact, save
from benchmarks.structured_cases import SCHEMAS, requests, validate

CHOICES = ("required", "named", "auto")


def tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI function tool record_<name> taking `schema` as its parameters."""
    function = {"name": f"record_{name}", "description": f"Record a {name}", "parameters": schema}
    return {"type": "function", "function": function}


def one_request(client: Any, i: int, prompt: str, max_tokens: int) -> dict[str, Any]:
    """Request i: its tools, its tool_choice, and what came back (parsed and validated)."""
    name, schema, _ = SCHEMAS[i % len(SCHEMAS)]
    other, other_schema, _ = SCHEMAS[(i + 1) % len(SCHEMAS)]
    tools = [tool(name, schema), tool(other, other_schema)]
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    kind = CHOICES[i % len(CHOICES)]
    choice: Any = (
        kind if kind != "named" else {"type": "function", "function": {"name": f"record_{name}"}}
    )
    out = client.chat.completions.create(
        model="bench", messages=[{"role": "user", "content": prompt}], tools=tools,
        tool_choice=choice, parallel_tool_calls=False, temperature=0, max_tokens=max_tokens,
    )  # fmt: skip
    message = out.choices[0].message
    calls = [
        _checked(c.function.name, c.function.arguments, params) for c in message.tool_calls or []
    ]
    return {
        "schema": name,
        "tool_choice": kind,
        "finish": out.choices[0].finish_reason,
        "tokens": out.usage.completion_tokens,
        "calls": calls,
        "valid": bool(calls) and all(c["valid"] for c in calls),
        "content": (message.content or "")[:300] or None,
    }


def _checked(name: str, arguments: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        value, parses = json.loads(arguments), True
    except ValueError:
        value, parses = None, False
    valid = parses and name in params and validate(value, params[name])
    return {"name": name, "arguments": arguments[:300], "parses": parses, "valid": valid}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per tool_choice: replies with calls, calls valid, text replies, finish reasons."""
    out: dict[str, Any] = {}
    for kind in CHOICES:
        group = [r for r in rows if r["tool_choice"] == kind]
        out[kind] = {
            "requests": len(group),
            "with_calls": sum(bool(r["calls"]) for r in group),
            "valid": sum(r["valid"] for r in group),
            "text": sum(not r["calls"] for r in group),
            "cut_calls": sum(
                (r["content"] or "").lstrip().startswith("<tool_call>") for r in group
            ),
            "finish": {
                f: sum(r["finish"] == f for r in group) for f in {r["finish"] for r in group}
            },
        }
    forced = [r for r in rows if r["tool_choice"] != "auto"]
    out["forced_valid"] = f"{sum(r['valid'] for r in forced)} of {len(forced)}"
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="onnx-int4")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="", help="what code ran (e.g. main, serve27d)")
    ap.add_argument("--out", type=Path, default=None)
    add_artifact_option(ap)
    args = ap.parse_args(argv)
    import openai

    started, results = time.perf_counter(), {}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"serve-tool-calls-{args.label or 'run'}-{stamp}.json"
    given = given_artifacts(args.artifact)
    for fmt in args.formats.split(","):
        path = given.get(fmt) or artifact(args.model, fmt)
        proc, base = start_server(path, None, args.threads, 1)
        assert proc.stderr is not None  # the request log: keep the pipe empty
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        rows: list[dict[str, Any]] = []
        results[fmt] = {"artifact": str(path), "rows": rows}
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key="-", timeout=600, max_retries=0)
            for i, (_, _, prompt) in enumerate(requests(args.n)):
                rows.append(one_request(client, i, prompt, args.max_tokens))
                results[fmt]["summary"] = summary(rows)
                save(out, args, argv, started, results, "serve_tool_calls")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(fmt, json.dumps(results[fmt]["summary"]))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
