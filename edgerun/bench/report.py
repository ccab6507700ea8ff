"""The self-contained HTML report and the PNG plot of `edgerun compare` (charts by matplotlib,
embedded as inline SVG; no scripts, no network)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from edgerun.bench.compare import COMPARE_COLUMNS, label
from edgerun.bench.render import energy_notes
from edgerun.bench.results import cell
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
    names = [_plain(f"{r['device']}\n{r['artifact']}\n{r['backend']}") for r in chart]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    decode = [r["decode_tok_s"] or 0 for r in chart]
    # error bars: the min-max range over the repetitions (asymmetric around the median)
    # (clamped at 0: a results file from elsewhere may hold a median outside its own range)
    low = [max(0, d - (r.get("decode_tok_s_min") or d)) for d, r in zip(decode, chart, strict=True)]
    high = [
        max(0, (r.get("decode_tok_s_max") or d) - d) for d, r in zip(decode, chart, strict=True)
    ]
    axes[0].bar(names, decode, color="#3b7dd8", yerr=[low, high], capsize=3)
    axes[0].set_title(f"decode tok/s (prompt {prompt}; median, min-max over reps)")
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
                _plain(f"{row['device']} {row['artifact']}"),
                (row["size_mb"], row["decode_tok_s"]),
                fontsize=8,
            )
    axes[2].set_xlabel("artifact size (MiB)")
    axes[2].set_ylabel("decode tok/s")
    axes[2].set_title("tok/s versus size")
    for ax in axes[:2]:
        ax.tick_params(axis="x", labelsize=7)
    return fig


def _plain(text: str) -> str:
    """`text` shown as it is: a '$' would start matplotlib mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")


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


PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html><html><head><meta charset="utf-8"><title>edgerun comparison</title>
<style>{{ style }}</style></head><body><h1>edgerun comparison</h1>
<h2>Devices and runs</h2><ul>
{%- for d in devices %}
<li><b>{{ d.name }}</b>: {{ d.cpu }}, {{ d.cores }} cores, {{ d.ram }} GiB RAM, {{ d.os }},
kernel {{ d.kernel }}; profile {{ d.profile }}; run {{ d.run }} at {{ d.created }},
{{ d.reps }} reps x {{ d.gen_tokens }} tokens, prompts {{ d.prompts }}</li>
{%- endfor %}</ul>
<h2>Results</h2><p class="note">Medians over repetitions. Ratios against row {{ base_row }}
({{ base_label }}), same prompt length.</p>
<table><thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}
<tr class="{{ 'base' if row.base else '' }}">
{%- for cell, numeric in row.cells %}<td class="{{ 'n' if numeric else '' }}">{{ cell }}</td>{% endfor -%}
</tr>
{%- endfor %}</tbody></table>
<h2>Energy</h2><ul class="note">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
<h2>Charts</h2>{{ charts }}</body></html>
"""
)


def _table_rows(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "base": bool(row.get("baseline")),
            "cells": [
                (cell(row, k), isinstance(row.get(k), (int, float))) for k, _ in COMPARE_COLUMNS
            ],
        }
        for row in table
    ]


def _devices(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        d = run.get("device") or {}
        wl = run.get("workload") or {}
        out.append(
            {
                "name": d.get("name"),
                "cpu": d.get("cpu_model"),
                "cores": d.get("physical_cores"),
                "ram": f"{(d.get('ram_bytes') or 0) / 2**30:.1f}",
                "os": d.get("os_release") or d.get("os"),
                "kernel": d.get("kernel"),
                "profile": (d.get("profile") or {}).get("id"),
                "run": run.get("id"),
                "created": run.get("created"),
                "reps": wl.get("reps"),
                "gen_tokens": wl.get("gen_tokens"),
                "prompts": wl.get("prompt_tokens"),
            }
        )
    return out


def to_html(
    table: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    baseline: dict[str, Any],
    charts: bool = True,
) -> str:
    """A complete HTML page: devices, the joined table with ratios, energy notes, charts (unless
    `charts` is False).

    Every value from the results files is escaped by the template (autoescape); the only markup
    inserted as is, the charts, is matplotlib's SVG, which escapes the text it draws."""
    if not charts:
        chart_html = Markup("")
    elif importlib.util.find_spec("matplotlib") is not None:
        chart_html = Markup(f'<div class="charts">{_svg(table)}</div>')
    else:
        chart_html = Markup(
            "<p class=\"note\">Charts need matplotlib: pip install 'edgerun[plot]'.</p>"
        )
    return PAGE.render(
        style=Markup(STYLE),
        devices=_devices(runs),
        base_row=baseline["row"],
        base_label=label(baseline),
        headers=[h for _, h in COMPARE_COLUMNS],
        rows=_table_rows(table),
        notes=list(dict.fromkeys(energy_notes(runs))),
        charts=chart_html,
    )
