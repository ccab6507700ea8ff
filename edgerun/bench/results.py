"""Bench results: the versioned JSON file, flat rows, and CSV / Markdown / terminal tables.

File schema (version 1)::

    {"schema": "edgerun-bench", "schema_version": 1, "runs": [
      {"id", "created", "libraries": {...}, "device": {fingerprint},
       "workload": {...}, "power": {meter label | reason}, "order": [[rep, artifact index]...],
       "artifacts": [{"path", "name", "format", "size_bytes", "manifest_sha256", "validation",
                      "backend", "providers", "threads", "profile_id", "load_s",
                      "memory_after_load", "reps": [...], "summary": {...}}]}]}

One file can hold several runs (``--append``); it is never overwritten otherwise.
"""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import atomic_write_json, atomic_write_text
from edgerun.core.untrusted import read_json

SCHEMA = "edgerun-bench"
SCHEMA_VERSION = 1
MB = 1024 * 1024

#: Flat row columns, in display order: (key, header).
COLUMNS: list[tuple[str, str]] = [
    ("device", "device"),
    ("profile", "profile"),
    ("artifact", "artifact"),
    ("backend", "backend"),
    ("threads", "threads"),
    ("prompt_tokens", "prompt"),
    ("ttft_ms", "TTFT ms"),
    ("prefill_tok_s", "prefill tok/s"),
    ("decode_tok_s", "decode tok/s"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("file_backed_mb", "file MiB"),
    ("anonymous_mb", "anon MiB"),
    ("j_per_token", "J/token"),
    ("energy_method", "energy"),
    ("size_mb", "size MiB"),
    ("ppl_ratio", "PPL ratio"),
    ("mean_kl", "mean KL"),
    ("top1_agreement", "top-1"),
]


def new_run(
    body: dict[str, Any], device: dict[str, Any], libraries: dict[str, Any]
) -> dict[str, Any]:
    """Wrap what run_bench returned with identity, time, device and library versions."""
    return {
        "id": uuid.uuid4().hex[:12],
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "libraries": libraries,
        "device": device,
        **body,
    }


def read_results(path: Path) -> dict[str, Any]:
    """Read a results file; refuse (EdgerunError) anything that is not one, another version, or
    of the wrong shape (see edgerun.bench.results_check), so that nothing after this fails."""
    from edgerun.bench.results_check import check_results

    path = Path(path)
    hint = "pass a file written by `edgerun bench --json`"
    data = read_json(path, hint)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgerunError(f'{path} is not an edgerun bench result (no "schema": "{SCHEMA}")', hint)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise EdgerunError(
            f"{path} is a bench result of schema version {version!r:.20}; this edgerun reads version {SCHEMA_VERSION}",
            "re-run `edgerun bench` with this edgerun, or use the edgerun version that wrote it",
        )
    check_results(data, str(path))
    return data


def write_results(path: Path, run: dict[str, Any], append: bool = False) -> dict[str, Any]:
    """Write `run` to `path` atomically; with `append`, add it to the runs already there."""
    path = Path(path)
    if path.exists():
        if not append:
            raise EdgerunError(
                f"{path} already exists",
                "pass --append to add this run to it, or choose a new name",
            )
        data = read_results(path)
    else:
        data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "runs": []}
    data["runs"].append(run)
    atomic_write_json(path, data)
    return data


def _median(summary: dict[str, Any], key: str, scale: float = 1.0) -> float | None:
    s = summary.get(key)
    return s["median"] * scale if s else None


#: Row key -> (summary key, scale): the metrics whose spread every table shows beside the median.
SPREAD: dict[str, tuple[str, float]] = {
    "ttft_ms": ("ttft_s", 1e3),
    "prefill_tok_s": ("prefill_tok_s", 1.0),
    "decode_tok_s": ("decode_tok_s", 1.0),
}


def _spread(summary: dict[str, Any]) -> dict[str, Any]:
    """`<key>_min`, `_max`, `_stdev` and `_n` of each SPREAD metric (None where not measured)."""
    out: dict[str, Any] = {}
    for key, (name, scale) in SPREAD.items():
        s = summary.get(name) or {}
        for part in ("min", "max", "stdev"):
            out[f"{key}_{part}"] = s[part] * scale if s.get(part) is not None else None
        out[f"{key}_n"] = s.get("n")
    return out


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (run, artifact, prompt length): medians, labels and validation."""
    out = []
    for run in data["runs"]:
        device = run.get("device", {})
        power = run.get("power", {})
        for art in run["artifacts"]:
            val = art.get("validation") or {}
            for prompt, s in art["summary"]["by_prompt"].items():
                out.append(
                    {
                        "device": device.get("name"),
                        "cpu": device.get("cpu_model"),
                        "profile": art.get("profile_id") or (device.get("profile") or {}).get("id"),
                        "artifact": art["name"],
                        "backend": art.get("backend"),
                        "providers": ",".join(art.get("providers") or []),
                        "threads": art.get("threads"),
                        "prompt_tokens": int(prompt),
                        "gen_tokens": run["workload"]["gen_tokens"],
                        "reps": run["workload"]["reps"],
                        "load_s": _median(art["summary"], "load_s"),
                        "ttft_ms": _median(s, "ttft_s", 1e3),
                        "prefill_tok_s": _median(s, "prefill_tok_s"),
                        "decode_tok_s": _median(s, "decode_tok_s"),
                        **_spread(s),
                        "latency_p50_ms": _median(s, "latency_p50_ms"),
                        "latency_p90_ms": _median(s, "latency_p90_ms"),
                        "latency_p99_ms": _median(s, "latency_p99_ms"),
                        "peak_rss_mb": _median(s, "peak_rss", 1 / MB),
                        "uss_mb": _median(s, "uss", 1 / MB),
                        "pss_mb": _median(s, "pss", 1 / MB),
                        "file_backed_mb": _median(s, "file_backed", 1 / MB),
                        "anonymous_mb": _median(s, "anonymous", 1 / MB),
                        "j_per_token": _median(s, "decode_j_per_token"),
                        "net_j_per_token": _median(s, "decode_net_j_per_token"),
                        "prefill_j_per_token": _median(s, "prefill_j_per_token"),
                        "avg_watts": _median(s, "avg_watts"),
                        "energy_method": _energy_label(power),
                        "energy_reason": None
                        if power.get("available") or power.get("estimate")
                        else power.get("reason"),
                        "size_mb": (art.get("size_bytes") or 0) / MB or None,
                        "ppl_ratio": val.get("ppl_ratio"),
                        "mean_kl": val.get("mean_kl"),
                        "top1_agreement": val.get("top1_agreement"),
                        "validation_passed": val.get("passed"),
                        **_busy(run, art, int(prompt)),
                        "run": run.get("id"),
                    }
                )
    return out


def _busy(run: dict[str, Any], art: dict[str, Any], prompt: int) -> dict[str, Any]:
    """The busy-machine signal of a row (edgerun.bench.busy): how many of its repetitions ran
    on a busy machine, and the run's other processes' CPU use and peak load average (None
    where the result predates the signal or /proc was missing)."""
    listed = _list(art.get("reps"))
    reps = [r for r in listed if isinstance(r, dict) and r.get("prompt_tokens") == prompt]
    marked = [r["busy"].get("busy") for r in reps if isinstance(r.get("busy"), dict)]
    found = run.get("busy")
    report: dict[str, Any] = found if isinstance(found, dict) else {}
    loads = [v for v in _list(report.get("load_1m")) if isinstance(v, (int, float))]
    others = report.get("others_cores")
    return {
        "busy_reps": sum(bool(b) for b in marked) if marked else None,
        "others_cores": others if isinstance(others, (int, float)) else None,
        "load_1m": max(loads) if loads else None,
    }


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _energy_label(power: dict[str, Any]) -> str:
    if power.get("estimate"):
        return "estimate"
    if not power.get("available"):
        return "none"
    bound = " lower-bound" if power.get("lower_bound") else ""
    return f"{power['meter']} {power['scope']} {power['method']}{bound}"


def fmt(value: Any) -> str:
    """A cell: numbers to a sensible precision, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        mag = abs(value)
        return f"{value:.4f}" if mag < 0.1 else f"{value:.3f}" if mag < 10 else f"{value:.1f}"
    return str(value)


def to_csv(table: list[dict[str, Any]]) -> str:
    """Every row and every column as CSV (full precision)."""
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return buf.getvalue()


def cell(row: dict[str, Any], key: str) -> str:
    """A table cell: `fmt` of the value, and for a SPREAD metric measured more than once its
    standard deviation over the repetitions (`5.04 ±8.4`), so a noisy median never looks clean."""
    text = fmt(row.get(key))
    stdev, n = row.get(f"{key}_stdev"), row.get(f"{key}_n")
    if key in SPREAD and row.get(key) is not None and stdev is not None and (n or 0) > 1:
        text += f" ±{stdev:.0f}" if stdev >= 10 else f" ±{stdev:.2g}"
    if row.get(f"{key}_overlap"):  # a ratio whose two ranges overlap (edgerun.bench.compare)
        text = f"≈{text}"
    return text


#: The metrics whose spread marks a run as unsteady (prefill tok/s moves with TTFT).
UNSTEADY = {"decode_tok_s": "decode tok/s", "ttft_ms": "TTFT ms"}


def unsteady(rows: list[dict[str, Any]], limit: float = 0.5) -> list[str]:
    """One line per row whose decode tok/s or TTFT ranged over its repetitions wider than
    `limit` x the median (e.g. 4.3-23.7 tok/s around 5.04)."""
    notes = []
    for row in rows:
        parts = []
        for key, name in UNSTEADY.items():
            med, lo, hi = row.get(key), row.get(f"{key}_min"), row.get(f"{key}_max")
            if med and lo is not None and hi is not None and (hi - lo) > limit * med:
                parts.append(f"{name} {fmt(lo)}–{fmt(hi)} around {fmt(med)}")
        if parts:
            where = f"{row.get('device')}/{row.get('artifact')} prompt {row.get('prompt_tokens')}"
            reps = row.get("decode_tok_s_n") or row.get("ttft_ms_n")
            notes.append(f"unsteady: {where}: {', '.join(parts)} over {reps} reps")
    return notes


def to_markdown(table: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A GitHub Markdown table of `columns` (medians with their spread, see `cell`)."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, k) for k, _ in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def write_table(path: Path, text: str) -> None:
    """Write a CSV / Markdown / HTML rendering atomically."""
    atomic_write_text(Path(path), text)
