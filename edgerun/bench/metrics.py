"""Metrics from token timestamps, and their summaries (median, min, max, stdev) over repetitions."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

#: Per-repetition numbers that get a summary, with where they live in a rep row.
SUMMARISED: dict[str, tuple[str, ...]] = {
    "ttft_s": ("ttft_s",),
    "prefill_tok_s": ("prefill_tok_s",),
    "decode_tok_s": ("decode_tok_s",),
    "latency_p50_ms": ("latency_ms", "p50"),
    "latency_p90_ms": ("latency_ms", "p90"),
    "latency_p99_ms": ("latency_ms", "p99"),
    "peak_rss": ("memory", "peak_rss"),
    "uss": ("memory", "uss"),
    "pss": ("memory", "pss"),
    "file_backed": ("memory", "file_backed"),
    "anonymous": ("memory", "anonymous"),
    "prefill_joules": ("energy", "prefill", "joules"),
    "decode_joules": ("energy", "decode", "joules"),
    "prefill_j_per_token": ("energy", "prefill", "j_per_token"),
    "decode_j_per_token": ("energy", "decode", "j_per_token"),
    "decode_net_j_per_token": ("energy", "decode", "net_j_per_token"),
    "avg_watts": ("energy", "total", "avg_watts"),
}


def rep_metrics(t_start: float, token_times: list[float], prompt_tokens: int) -> dict[str, Any]:
    """Speed of one generation from the instant it started and the instant of every token.

    TTFT covers the prompt's prefill and the first token; decode speed and per-token latency
    cover the tokens after the first."""
    if not token_times:
        raise ValueError("the model produced no token")
    ttft = token_times[0] - t_start
    gaps = np.diff(np.asarray(token_times)) * 1e3
    decode_s = token_times[-1] - token_times[0]
    latency = (
        {q: float(np.percentile(gaps, n)) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))}
        if gaps.size
        else {"p50": None, "p90": None, "p99": None}
    )
    return {
        "ttft_s": ttft,
        "prefill_tok_s": prompt_tokens / ttft if ttft > 0 else None,
        "gen_tokens": len(token_times),
        "decode_s": decode_s,
        "decode_tok_s": gaps.size / decode_s if decode_s > 0 else None,
        "latency_ms": latency,
    }


def stats(values: list[float | None]) -> dict[str, Any] | None:
    """{median, min, max, stdev, n} of the non-null values; None if there are none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def _dig(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def metric_of(row: dict[str, Any], name: str) -> Any:
    """The value of SUMMARISED metric `name` in one rep row (None where it is missing)."""
    return _dig(row, SUMMARISED[name])


def summarize_artifact(entry: dict[str, Any]) -> dict[str, Any]:
    """{"load_s": stats, "by_prompt": {"128": {metric: stats}}} for one artifact's reps."""
    by_prompt: dict[str, dict[str, Any]] = {}
    for prompt in sorted({r["prompt_tokens"] for r in entry["reps"]}):
        rows = [r for r in entry["reps"] if r["prompt_tokens"] == prompt]
        by_prompt[str(prompt)] = {
            name: stats([_dig(r, path) for r in rows]) for name, path in SUMMARISED.items()
        }
    return {"load_s": stats([entry.get("load_s")]), "by_prompt": by_prompt}
