"""From per-repetition timings to the table: medians, ratio to the best peer, roofline fraction.

Pure functions over plain dicts (the rows of the results JSON), so they are tested on fake rows.
A row dict holds: name, kind ("peer" | "edgerun"), fmt, status ("ok" | "skipped" | "failed"),
reason, size_bytes, touched_bytes, peak_rss_bytes, and ``reps[str(prompt_len)]``: a list of
edgerun.bench.metrics.rep_metrics dicts (``ttft_s``, ``prefill_tok_s``, ``decode_tok_s``,
``gen_tokens``, ...), plus ``tokens[str(prompt_len)]``. The roofline is
edgerun.bench.bandwidth's: STREAM bandwidth / weight bytes read per token.
"""

from __future__ import annotations

import statistics
from typing import Any

from edgerun.bench.bandwidth import roofline_tok_s

REFERENCE_ROW = "pytorch fp32"  # greedy tokens of the other rows are compared with this row's


def _median(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def agreement(tokens: list[int] | None, reference: list[int] | None) -> int | None:
    """How many leading greedy tokens equal the reference row's (None when either is missing)."""
    if tokens is None or reference is None:
        return None
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def summarize(rows: list[dict[str, Any]], bandwidth_gb_s: float | None) -> list[dict[str, Any]]:
    """One summary line per (prompt length, row that ran): medians, ratios, roofline fraction."""
    lengths = sorted({int(k) for r in rows for k in r.get("reps", {})})
    ref = next((r for r in rows if r["name"] == REFERENCE_ROW and r["status"] == "ok"), None)
    out: list[dict[str, Any]] = []
    for length in lengths:
        key = str(length)
        lines = []
        for row in rows:
            reps = row.get("reps", {}).get(key)
            if row["status"] != "ok" or not reps:
                continue
            touched = row.get("touched_bytes")
            roof = roofline_tok_s(bandwidth_gb_s, touched)
            decode = _median([r["decode_tok_s"] for r in reps])
            validation = (row.get("meta") or {}).get("validation") or {}
            lines.append({
                "prompt_tokens": length,
                "name": row["name"],
                "kind": row["kind"],
                "fmt": row["fmt"],
                "reps": len(reps),
                "decode_tok_s": decode,
                "prefill_tok_s": _median([r["prefill_tok_s"] for r in reps]),
                "ttft_s": _median([r["ttft_s"] for r in reps]),
                "peak_rss_bytes": row.get("peak_rss_bytes"),
                "size_bytes": row.get("size_bytes"),
                "roofline_tok_s": roof,
                "roofline_frac": decode / roof if decode and roof else None,
                "valid": validation.get("passed"),
                "agree": agreement(
                    row.get("tokens", {}).get(key), (ref or {}).get("tokens", {}).get(key)
                ),
            })  # fmt: skip
        peers = [x["decode_tok_s"] for x in lines if x["kind"] == "peer" and x["decode_tok_s"]]
        best = max(peers) if peers else None
        for x in lines:
            x["vs_best_peer"] = x["decode_tok_s"] / best if best and x["decode_tok_s"] else None
        out.extend(lines)
    return out


def head_to_head(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decode-speed ratios of edgerun's ONNX int4, GGUF q4_k_m and best row to every peer.
    The best row is the fastest whose artifact did not fail edgerun's validation gate."""
    out: list[dict[str, Any]] = []
    for length in sorted({x["prompt_tokens"] for x in summary}):
        lines = [x for x in summary if x["prompt_tokens"] == length and x["decode_tok_s"]]
        ours = [x for x in lines if x["kind"] == "edgerun"]
        peers = [x for x in lines if x["kind"] == "peer"]
        picks: dict[str, dict[str, Any]] = {}
        for x in ours:
            if x["fmt"] in ("onnx-int4", "gguf-q4_k_m") and x["name"] == f"edgerun {x['fmt']}":
                picks[x["name"]] = x
        valid = [x for x in ours if x.get("valid") is not False]  # a failed gate is no "best"
        if valid:
            best = max(valid, key=lambda x: x["decode_tok_s"])
            picks[f"edgerun best ({best['name']})"] = best
        for label, x in picks.items():
            out.append({
                "prompt_tokens": length,
                "edgerun": label,
                "decode_tok_s": x["decode_tok_s"],
                "vs": {p["name"]: x["decode_tok_s"] / p["decode_tok_s"] for p in peers},
            })  # fmt: skip
    return out


def same_file(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """edgerun against llama.cpp's raw loop on the very same GGUF file: the per-token time
    edgerun adds (its Python sampling, detokenization and backend glue), in milliseconds."""
    out: list[dict[str, Any]] = []
    for x in summary:
        if x["kind"] != "edgerun" or x["name"] != f"edgerun {x['fmt']}":
            continue
        peer = next(
            (p for p in summary
             if p["name"] == f"llama.cpp {x['fmt']}" and p["prompt_tokens"] == x["prompt_tokens"]),
            None,
        )  # fmt: skip
        if peer and x["decode_tok_s"] and peer["decode_tok_s"]:
            out.append({
                "prompt_tokens": x["prompt_tokens"],
                "fmt": x["fmt"],
                "edgerun_ms_per_token": 1e3 / x["decode_tok_s"],
                "llama_cpp_ms_per_token": 1e3 / peer["decode_tok_s"],
                "overhead_ms_per_token": 1e3 / x["decode_tok_s"] - 1e3 / peer["decode_tok_s"],
            })  # fmt: skip
    return out


# Issue 5's speed targets: (edgerun row, peer row, lowest decode tok/s ratio that meets it).
TARGETS = [
    ("edgerun onnx-int4", "onnxruntime-genai int4", 1.0),
    ("edgerun gguf-q8_0", "llama.cpp gguf-q8_0", 0.97),
    ("edgerun gguf-q4_k_m", "llama.cpp gguf-q4_k_m", 0.97),
    ("edgerun gguf-q4_0", "llama.cpp gguf-q4_0", 0.97),
    ("edgerun onnx-fp32", "optimum fp32", 2.0),
]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each speed target at each prompt length, judged on the median of per-round ratios: the
    rows are interleaved, so round i of both ran within seconds of each other and a slow spell
    of this shared machine hits both. The ratio of the two medians is kept beside it."""
    by_name = {r["name"]: r for r in rows if r["status"] == "ok"}
    out: list[dict[str, Any]] = []
    for ours_name, peer_name, goal in TARGETS:
        ours, peer = by_name.get(ours_name), by_name.get(peer_name)
        if ours is None or peer is None:
            continue
        for key in sorted(set(ours.get("reps", {})) & set(peer.get("reps", {})), key=int):
            a = [r["decode_tok_s"] for r in ours["reps"][key]]
            b = [r["decode_tok_s"] for r in peer["reps"][key]]
            paired = [x / y for x, y in zip(a, b, strict=False) if x and y]
            ma, mb = _median(a), _median(b)
            if not paired or not ma or not mb:
                continue
            ratio = statistics.median(paired)
            out.append({
                "prompt_tokens": int(key),
                "edgerun": ours_name,
                "peer": peer_name,
                "goal": goal,
                "ratio": ratio,
                "ratio_of_medians": ma / mb,
                "rounds": len(paired),
                "paired_min": min(paired),
                "paired_max": max(paired),
                "met": ratio >= goal,
            })  # fmt: skip
    return out
