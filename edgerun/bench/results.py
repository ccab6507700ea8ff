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

from edgerun.errors import EdgerunError
from edgerun.home import atomic_write_json, atomic_write_text
from edgerun.untrusted import read_json

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
                        "decode_tok_s_stdev": (s.get("decode_tok_s") or {}).get("stdev"),
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
                        "run": run.get("id"),
                    }
                )
    return out


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


def to_markdown(table: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A GitHub Markdown table of `columns`."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def write_table(path: Path, text: str) -> None:
    """Write a CSV / Markdown / HTML rendering atomically."""
    atomic_write_text(Path(path), text)
