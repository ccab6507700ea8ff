"""The parts of the comparison report a lab publishes beside the joined table: each device's
library versions and, for a lab run, what was shipped to it and how each pair ended; one artifact
across devices; and the title line (devices, dates) of the charts."""

from __future__ import annotations

from typing import Any

from edgerun.bench.results import SPREAD, cell, fmt

# The libraries whose versions change the numbers (as `lab devices` compares them).
LIBRARIES = ("edgerun", "onnxruntime", "onnxruntime-genai", "llama-cpp-python")

#: The report's joined table, narrow enough to read at 900 px without scrolling: (value key,
#: header, the ratio key shown under the value or None). The backend is shown under the artifact;
#: every other column of the results sits in the row's expandable details (DETAILS).
HTML_COLUMNS: list[tuple[str, str, str | None]] = [
    ("row", "#", None),
    ("device", "device", None),
    ("artifact", "artifact", None),
    ("prompt_tokens", "prompt", None),
    ("decode_tok_s", "decode tok/s", "decode_ratio"),
    ("prefill_tok_s", "prefill tok/s", "prefill_ratio"),
    ("ttft_ms", "TTFT ms", "ttft_ratio"),
    ("peak_rss_mb", "peak RSS MiB", "rss_ratio"),
    ("j_per_token", "J/token", "energy_ratio"),
    ("size_mb", "size MiB", None),
    ("mean_kl", "mean KL", None),
    ("ppl_ratio", "PPL ratio", None),
]

#: What a row's details show (label, row key), after the min-max range of each SPREAD metric.
DETAILS = [
    ("profile", "profile"),
    ("threads", "threads"),
    ("providers", "providers"),
    ("top-1", "top1_agreement"),
    ("p50 ms", "latency_p50_ms"),
    ("p99 ms", "latency_p99_ms"),
    ("file MiB", "file_backed_mb"),
    ("anon MiB", "anonymous_mb"),
    ("load s", "load_s"),
    ("net J/token", "net_j_per_token"),
    ("avg W", "avg_watts"),
    ("energy", "energy_method"),
    ("validation passed", "validation_passed"),
    ("busy reps", "busy_reps"),
    ("others' cores", "others_cores"),
    ("load 1m", "load_1m"),
    ("run", "run"),
]

#: One artifact across devices: a row per device, the artifact's numbers, and the decode speed
#: against the fastest device for it.
ACROSS_COLUMNS = [
    ("device", "device"),
    ("backend", "backend"),
    ("threads", "threads"),
    ("decode_tok_s", "decode tok/s"),
    ("of_fastest", "× fastest"),
    ("ttft_ms", "TTFT ms"),
    ("prefill_tok_s", "prefill tok/s"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("j_per_token", "J/token"),
]


def versions(run: dict[str, Any]) -> str:
    """`edgerun 0.1.0, onnxruntime 1.23.2, ...` of the libraries a run recorded."""
    libs = run.get("libraries")
    if not isinstance(libs, dict):  # results from outside: a damaged field is "not recorded"
        libs = {}
    found = [f"{name} {libs[name]}" for name in LIBRARIES if isinstance(libs.get(name), str)]
    return ", ".join(found) or "not recorded"


def ship_status(run: dict[str, Any]) -> list[str]:
    """For a lab run, one line per artifact: shipped (MiB) or already held, and how it ended
    (ok, or failed / declined / refused / cancelled with the reason); [] for a local run."""
    lab = run.get("lab")
    if not isinstance(lab, dict):
        return []
    shipped = lab.get("shipped")
    if not isinstance(shipped, dict):
        shipped = {}
    lines = []
    for art in run.get("artifacts") or []:
        sent = shipped.get(art.get("name"))
        how = (
            "not shipped"
            if not isinstance(sent, (int, float))
            else "already there"
            if sent == 0
            else f"shipped {sent / 2**20:.1f} MiB"
        )
        status = art.get("lab") if isinstance(art.get("lab"), dict) else {"status": "ok"}
        reason = f": {status['reason']}" if status.get("reason") else ""
        lines.append(f"{art.get('name')}: {how}, {status.get('status')}{reason}")
    return lines


def across_devices(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{"artifact", "prompt", "rows": [cells per ACROSS_COLUMNS]}] for each artifact measured on
    more than one device (at the shortest prompt), fastest device first."""
    prompt = min((r["prompt_tokens"] for r in table), default=0)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        if row["prompt_tokens"] == prompt and row.get("decode_tok_s") is not None:
            groups.setdefault(str(row["artifact"]), []).append(row)
    views = []
    for artifact, rows in groups.items():
        if len({r.get("device") for r in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda r: -r["decode_tok_s"])
        fastest = rows[0]["decode_tok_s"]
        shown = [
            {**r, "of_fastest": r["decode_tok_s"] / fastest if fastest else None} for r in rows
        ]
        cells = [[_compact(r, k) for k, _ in ACROSS_COLUMNS] for r in shown]
        views.append({"artifact": artifact, "prompt": prompt, "rows": cells})
    return views


def title(runs: list[dict[str, Any]]) -> str:
    """`edgerun comparison: dev-a, dev-b · 2026-12-06 – 2026-12-07`: what the charts show."""
    names = list(dict.fromkeys(str((r.get("device") or {}).get("name")) for r in runs))
    days = sorted({str(r.get("created", ""))[:10] for r in runs if r.get("created")})
    when = days[0] if len(days) == 1 else f"{days[0]} – {days[-1]}" if days else "undated"
    shown = ", ".join(names[:4]) + (f" +{len(names) - 4} more" if len(names) > 4 else "")
    return f"edgerun comparison: {shown} · {when}"


def table_rows(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's joined table: per row {"base", "cells": [(value, what is shown under it or
    None, right-aligned)] per HTML_COLUMNS, "details": ["label value", ...]}. Under a value: its
    ratio (`× 0.564`), under the artifact: the backend."""
    out = []
    for row in table:
        cells = []
        for key, _, ratio in HTML_COLUMNS:
            under = f"× {cell(row, ratio)}" if ratio else None
            if key == "artifact":
                under = fmt(row.get("backend"))
            cells.append((_compact(row, key), under, ratio is not None or _numeric(row, key)))
        out.append({"base": bool(row.get("baseline")), "cells": cells, "details": details(row)})
    return out


def _compact(row: dict[str, Any], key: str) -> str:
    """`cell`, a median of 1000 or more without decimals (`9875 ±477`: the table stays narrow)."""
    text, value = cell(row, key), row.get(key)
    return _short(value) + text[len(fmt(value)) :] if value is not None else text


def _short(value: Any) -> str:
    """`fmt`, a float of 1000 or more without decimals."""
    return f"{value:.0f}" if isinstance(value, float) and abs(value) >= 1000 else fmt(value)


def _numeric(row: dict[str, Any], key: str) -> bool:
    value = row.get(key)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def details(row: dict[str, Any]) -> list[str]:
    """A row's details: each spread metric's min-max over its repetitions, then DETAILS (those
    recorded)."""
    out = []
    for key, header, _ in HTML_COLUMNS:
        low, high, n = (row.get(f"{key}_{part}") for part in ("min", "max", "n"))
        if key in SPREAD and low is not None and high is not None:
            out.append(f"{header} {_short(low)}–{_short(high)} over {n} reps")
    out += [f"{label} {fmt(row[key])}" for label, key in DETAILS if row.get(key) not in (None, "")]
    return out
