"""Join bench results from one or many devices and compare them against a baseline row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgerun.bench.results import read_results, rows
from edgerun.core.errors import EdgerunError

JOIN_KEYS = ("device", "profile", "artifact", "backend")
#: (row key, ratio column, header): the ratio is row / baseline.
RATIOS = [
    ("decode_tok_s", "decode_ratio", "decode ×"),
    ("prefill_tok_s", "prefill_ratio", "prefill ×"),
    ("ttft_ms", "ttft_ratio", "TTFT ×"),
    ("peak_rss_mb", "rss_ratio", "RAM ×"),
    ("j_per_token", "energy_ratio", "J/tok ×"),
]

COMPARE_COLUMNS: list[tuple[str, str]] = [
    ("row", "#"),
    ("device", "device"),
    ("profile", "profile"),
    ("artifact", "artifact"),
    ("backend", "backend"),
    ("prompt_tokens", "prompt"),
    ("decode_tok_s", "decode tok/s"),
    ("prefill_tok_s", "prefill tok/s"),
    ("ttft_ms", "TTFT ms"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("j_per_token", "J/token"),
    ("size_mb", "size MiB"),
    ("ppl_ratio", "PPL ratio"),
    ("mean_kl", "mean KL"),
    ("top1_agreement", "top-1"),
    ("busy_reps", "busy reps"),
    ("others_cores", "others' cores"),
    ("load_1m", "load 1m"),
] + [(col, header) for _, col, header in RATIOS]
#: The terminal's columns in display order, each ratio beside its value; what does not fit the
#: terminal is dropped from the end (edgerun.bench.render.fit_columns keeps the first that fit).
TERMINAL_COLUMNS: list[tuple[str, str]] = [
    ("row", "#"),
    ("device", "device"),
    ("artifact", "artifact"),
    ("backend", "backend"),
    ("prompt_tokens", "prompt"),
    ("decode_tok_s", "decode tok/s"),
    ("decode_ratio", "decode ×"),
    ("ttft_ms", "TTFT ms"),
    ("ttft_ratio", "TTFT ×"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("rss_ratio", "RAM ×"),
    ("j_per_token", "J/token"),
    ("energy_ratio", "J/tok ×"),
    ("size_mb", "size MiB"),
    ("ppl_ratio", "PPL ratio"),
    ("top1_agreement", "top-1"),
    ("busy_reps", "busy reps"),
]


def load(paths: list[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows, runs) of every result file, rows sorted by device, profile, artifact, backend,
    prompt length and numbered from 1."""
    if not paths:
        raise EdgerunError("no result files given", "pass files written by `edgerun bench --json`")
    table: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = read_results(path)
        runs += data["runs"]
        for row in rows(data):
            table.append({**row, "file": str(path)})
    table.sort(key=lambda r: tuple(str(r.get(k) or "") for k in JOIN_KEYS) + (r["prompt_tokens"],))
    for i, row in enumerate(table, 1):
        row["row"] = i
    return table, runs


def label(row: dict[str, Any]) -> str:
    """device/profile/artifact/backend: what --baseline matches against."""
    return "/".join(str(row.get(k)) for k in JOIN_KEYS)


def pick_baseline(table: list[dict[str, Any]], spec: str | None) -> dict[str, Any]:
    """The baseline row: a 1-based row number, or a substring of one row group's label."""
    if not table:
        raise EdgerunError("the result files hold no rows", "run `edgerun bench` first")
    if spec is None:
        return table[0]
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= len(table):
            raise EdgerunError(
                f"--baseline {n} is not a row (there are {len(table)})",
                "use a row number from the # column",
            )
        return table[n - 1]
    groups = {label(r): r for r in reversed(table)}
    hits = [g for g in groups if spec in g]
    if len(hits) != 1:
        shown = ", ".join(groups)
        what = "matches no row" if not hits else f"matches {len(hits)} row groups"
        raise EdgerunError(
            f"--baseline '{spec}' {what}", f"use a row number or a unique part of one of: {shown}"
        )
    return groups[hits[0]]


def add_ratios(table: list[dict[str, Any]], baseline: dict[str, Any]) -> None:
    """Ratio columns: each row against the baseline group's row of the same prompt length."""
    base_rows = {r["prompt_tokens"]: r for r in table if label(r) == label(baseline)}
    for row in table:
        base = base_rows.get(row["prompt_tokens"])
        row["baseline"] = row is base
        for key, col, _ in RATIOS:
            a, b = row.get(key), (base or {}).get(key)
            row[col] = a / b if (a is not None and b) else None
            row[f"{col}_overlap"] = (
                base is not None and row is not base and _overlap(row, base, key)
            )


def _overlap(row: dict[str, Any], base: dict[str, Any], key: str) -> bool:
    """Whether the two rows' ranges (min-max over repetitions) of `key` overlap: their ratio
    may then be noise. False where a range is not recorded."""
    ends = [r.get(f"{key}_{end}") for r in (row, base) for end in ("min", "max")]
    if any(v is None for v in ends):
        return False
    lo, hi, base_lo, base_hi = (float(v) for v in ends if v is not None)
    return lo <= base_hi and base_lo <= hi
