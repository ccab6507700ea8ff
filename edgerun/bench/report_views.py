"""The parts of the comparison report a lab publishes beside the joined table: each device's
library versions and, for a lab run, what was shipped to it and how each pair ended; one artifact
across devices; and the title line (devices, dates) of the charts."""

from __future__ import annotations

from typing import Any

from edgerun.bench.compare import TERMINAL_COLUMNS
from edgerun.bench.results import cell

# The libraries whose versions change the numbers (as `lab devices` compares them).
LIBRARIES = ("edgerun", "onnxruntime", "onnxruntime-genai", "llama-cpp-python")

#: The report's joined table: the terminal's columns (each ratio beside its value; the profile
#: left to the devices list above) plus prefill and mean KL, so that it reads at 900 px (where a
#: median's ±stdev may wrap under it).
HTML_COLUMNS = list(TERMINAL_COLUMNS)
HTML_COLUMNS[HTML_COLUMNS.index(("ttft_ratio", "TTFT ×")) + 1 : 0] = [
    ("prefill_tok_s", "prefill tok/s"),
    ("prefill_ratio", "prefill ×"),
]
HTML_COLUMNS.insert(HTML_COLUMNS.index(("top1_agreement", "top-1")), ("mean_kl", "mean KL"))

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
    libs = run.get("libraries") or {}
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
        cells = [[cell(r, k) for k, _ in ACROSS_COLUMNS] for r in shown]
        views.append({"artifact": artifact, "prompt": prompt, "rows": cells})
    return views


def title(runs: list[dict[str, Any]]) -> str:
    """`edgerun comparison: dev-a, dev-b · 2026-12-06 – 2026-12-07`: what the charts show."""
    names = list(dict.fromkeys(str((r.get("device") or {}).get("name")) for r in runs))
    days = sorted({str(r.get("created", ""))[:10] for r in runs if r.get("created")})
    when = days[0] if len(days) == 1 else f"{days[0]} – {days[-1]}" if days else "undated"
    shown = ", ".join(names[:4]) + (f" +{len(names) - 4} more" if len(names) > 4 else "")
    return f"edgerun comparison: {shown} · {when}"
