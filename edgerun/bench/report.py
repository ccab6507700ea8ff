"""The self-contained HTML report and the PNG plot of `edgerun compare` (charts by matplotlib,
embedded as inline SVG; no scripts, no network)."""

from __future__ import annotations

import html
import importlib.util
import io
from pathlib import Path
from typing import Any

from edgerun.bench.compare import COMPARE_COLUMNS, label
from edgerun.bench.render import energy_notes
from edgerun.bench.results import fmt
from edgerun.errors import require

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.base{background:#eef6ff}
.charts svg{max-width:100%;height:auto}.note{color:#555;font-size:13px}"""


def _chart_rows(table: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    prompt = min(r["prompt_tokens"] for r in table)
    return [r for r in table if r["prompt_tokens"] == prompt], prompt


def figure(table: list[dict[str, Any]]) -> Any:
    """A matplotlib Figure: decode tok/s and J/token per device and artifact, tok/s vs size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart, prompt = _chart_rows(table)
    names = [f"{r['device']}\n{r['artifact']}\n{r['backend']}" for r in chart]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    axes[0].bar(names, [r["decode_tok_s"] or 0 for r in chart], color="#3b7dd8")
    axes[0].set_title(f"decode tok/s (prompt {prompt})")
    energy = [r["j_per_token"] for r in chart]
    if any(e is not None for e in energy):
        axes[1].bar(names, [e or 0 for e in energy], color="#d8893b")
    else:
        axes[1].text(0.5, 0.5, "no energy measured", ha="center", va="center")
        axes[1].set_xticks([])
        axes[1].set_yticks([])
    axes[1].set_title("decode J/token")
    for row in chart:
        if row["size_mb"] and row["decode_tok_s"]:
            axes[2].scatter(row["size_mb"], row["decode_tok_s"])
            axes[2].annotate(
                f"{row['device']} {row['artifact']}",
                (row["size_mb"], row["decode_tok_s"]),
                fontsize=8,
            )
    axes[2].set_xlabel("artifact size (MiB)")
    axes[2].set_ylabel("decode tok/s")
    axes[2].set_title("tok/s versus size")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelsize=7)
    return fig


def write_png(table: list[dict[str, Any]], path: Path) -> None:
    """The comparison figure as one PNG (needs the `plot` extra)."""
    require("matplotlib", "plot")
    import matplotlib.pyplot as plt

    fig = figure(table)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _svg(table: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    fig = figure(table)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _table_html(table: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COMPARE_COLUMNS)
    body = []
    for row in table:
        cells = "".join(
            f'<td class="{"n" if isinstance(row.get(k), (int, float)) else ""}">{html.escape(fmt(row.get(k)))}</td>'
            for k, _ in COMPARE_COLUMNS
        )
        body.append(f'<tr class="{"base" if row.get("baseline") else ""}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _devices_html(runs: list[dict[str, Any]]) -> str:
    items = []
    for run in runs:
        d = run.get("device", {})
        wl = run.get("workload", {})
        ram = (d.get("ram_bytes") or 0) / 2**30
        items.append(
            f"<li><b>{html.escape(str(d.get('name')))}</b>: {html.escape(str(d.get('cpu_model')))}, "
            f"{d.get('physical_cores')} cores, {ram:.1f} GiB RAM, {html.escape(str(d.get('os_release') or d.get('os')))}, "
            f"kernel {html.escape(str(d.get('kernel')))}; profile {html.escape(str((d.get('profile') or {}).get('id')))}; "
            f"run {html.escape(str(run.get('id')))} at {html.escape(str(run.get('created')))}, "
            f"{wl.get('reps')} reps x {wl.get('gen_tokens')} tokens, prompts {wl.get('prompt_tokens')}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def to_html(
    table: list[dict[str, Any]], runs: list[dict[str, Any]], baseline: dict[str, Any]
) -> str:
    """A complete HTML page: devices, the joined table with ratios, energy notes, charts."""
    if importlib.util.find_spec("matplotlib") is not None:
        charts = f'<div class="charts">{_svg(table)}</div>'
    else:
        charts = "<p class=\"note\">Charts need matplotlib: pip install 'edgerun[plot]'.</p>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in dict.fromkeys(energy_notes(runs)))
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>edgerun comparison</title>'
        f"<style>{STYLE}</style></head><body><h1>edgerun comparison</h1>"
        f"<h2>Devices and runs</h2>{_devices_html(runs)}"
        f'<h2>Results</h2><p class="note">Medians over repetitions. Ratios against row '
        f"{baseline['row']} ({html.escape(label(baseline))}), same prompt length.</p>"
        f'{_table_html(table)}<h2>Energy</h2><ul class="note">{notes}</ul>'
        f"<h2>Charts</h2>{charts}</body></html>\n"
    )
