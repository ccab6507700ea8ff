"""The self-contained HTML report and the PNG plot of `edgerun compare` (charts by matplotlib,
embedded as inline SVG; no scripts, no network)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from edgerun.bench.compare import label
from edgerun.bench.render import energy_notes
from edgerun.bench.report_views import (
    ACROSS_COLUMNS,
    HTML_COLUMNS,
    across_devices,
    ship_status,
    table_rows,
    title,
    versions,
)
from edgerun.core.errors import require

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1600px}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 8px;border-bottom:1px solid #ddd}
th{position:sticky;top:0;background:#fff;vertical-align:bottom}th small{font-weight:normal}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}tr.base{background:#eef6ff}
.wrap{overflow-x:auto;max-width:100%}td:nth-child(-n+3){white-space:nowrap}
td small,th small{display:block;color:#666;font-size:11px}summary{cursor:pointer;white-space:nowrap}
tr.more td{font-size:12px;color:#444;white-space:normal}
@supports selector(:has(*)){tr.more{display:none}tr:has(details[open])+tr.more{display:table-row}
tr:has(details[open]) td{border-bottom:0}}
.charts svg{max-width:100%;height:auto}.note{color:#555;font-size:13px}
@media (max-width:1000px){body{margin:1em}table{font-size:12px}th,td{padding:3px 4px}}"""


def _chart_rows(table: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    prompt = min(r["prompt_tokens"] for r in table)
    return [r for r in table if r["prompt_tokens"] == prompt], prompt


def figure(table: list[dict[str, Any]], runs: list[dict[str, Any]] | None = None) -> Any:
    """A matplotlib Figure: decode tok/s and J/token per device and artifact, tok/s against size
    and against fidelity (mean KL); titled with the devices and dates of `runs`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart, prompt = _chart_rows(table)
    names = [_plain(f"{r['device']} · {r['artifact']} ({r['backend']})") for r in chart]
    height = max(8.0, 4.0 + 0.5 * len(chart))  # a bar label per row, never overlapping
    fig, grid = plt.subplots(2, 2, figsize=(14, height), constrained_layout=True)
    axes = grid.flatten()
    if runs:
        fig.suptitle(_plain(title(runs)), fontsize=13)
    decode = [r["decode_tok_s"] or 0 for r in chart]
    # error bars: the min-max range over the repetitions (asymmetric around the median)
    # (clamped at 0: a results file from elsewhere may hold a median outside its own range)
    low = [max(0, d - (r.get("decode_tok_s_min") or d)) for d, r in zip(decode, chart, strict=True)]
    high = [
        max(0, (r.get("decode_tok_s_max") or d) - d) for d, r in zip(decode, chart, strict=True)
    ]
    # horizontal bars: the device · artifact labels read across, one per line
    axes[0].barh(names, decode, color="#3b7dd8", xerr=[low, high], capsize=3)
    axes[0].set_title(f"decode tok/s (prompt {prompt}; median, min-max over reps)")
    axes[0].invert_yaxis()
    energy = [r["j_per_token"] for r in chart]
    if any(e is not None for e in energy):
        axes[1].barh(names, [e or 0 for e in energy], color="#d8893b")
        axes[1].invert_yaxis()
    else:
        axes[1].text(0.5, 0.5, "no energy measured", ha="center", va="center")
        axes[1].set_xticks([])
        axes[1].set_yticks([])
    axes[1].set_title("decode J/token")
    _scatter(axes[2], chart, "size_mb", "artifact size (MiB)")
    axes[2].set_title("tok/s versus size")
    _scatter(axes[3], chart, "mean_kl", "mean KL against the fp32 reference (lower: more faithful)")
    axes[3].set_title("tok/s versus fidelity")
    for ax in axes[:2]:
        ax.tick_params(axis="y", labelsize=8)
    return fig


def _scatter(ax: Any, chart: list[dict[str, Any]], key: str, xlabel: str) -> None:
    """decode tok/s against `key`, a labelled point per row; a log x axis when the values span
    more than 10x (so that neither end is crushed), margins around the points."""
    points = [r for r in chart if r.get(key) and r.get("decode_tok_s")]
    if not points:
        ax.text(0.5, 0.5, f"no {xlabel.split(' (')[0]} recorded", ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    devices = list(dict.fromkeys(str(r["device"]) for r in points))
    for i, device in enumerate(devices):  # a colour per device, the artifact beside its point
        mine = [r for r in points if str(r["device"]) == device]
        ax.scatter([r[key] for r in mine], [r["decode_tok_s"] for r in mine], color=f"C{i}")
        for row in mine:
            ax.annotate(_plain(f" {row['artifact']}"), (row[key], row["decode_tok_s"]), fontsize=8)
    ax.legend([_plain(d) for d in devices], fontsize=8, loc="best")
    xs = [r[key] for r in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.margins(0.15)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("decode tok/s")


def _plain(text: str) -> str:
    """`text` shown as it is: a '$' would start matplotlib mathtext (and can fail to parse)."""
    return text.replace("$", r"\$")


def write_png(
    table: list[dict[str, Any]], path: Path, runs: list[dict[str, Any]] | None = None
) -> None:
    """The comparison figure as one PNG, titled with the devices and dates of `runs` (needs the
    `plot` extra)."""
    require("matplotlib", "plot")
    import matplotlib.pyplot as plt

    fig = figure(table, runs)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _svg(table: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    fig = figure(table)  # the page's own heading carries the title
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{{ style }}</style></head><body><h1>{{ title }}</h1>
<h2>Devices and runs</h2><ul>
{%- for d in devices %}
<li><b>{{ d.name }}</b>: {{ d.cpu }}, {{ d.cores }} cores, {{ d.ram }} GiB RAM, {{ d.os }},
kernel {{ d.kernel }}; profile {{ d.profile }}; run {{ d.run }} at {{ d.created }},
{{ d.reps }} reps x {{ d.gen_tokens }} tokens, prompts {{ d.prompts }}<br>
<span class="note">versions: {{ d.versions }}</span>
{%- if d.ship %}<ul class="note">{% for s in d.ship %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}</li>
{%- endfor %}</ul>
<h2>Results</h2><p class="note">Medians ±stdev over repetitions; under each, the ratio against
row {{ base_row }} ({{ base_label }}), same prompt length; ≈: the two rows' ranges overlap (may be
noise). Open a row's number for its ranges and every other column.</p>
<div class="wrap"><table><thead><tr>{% for h, sub in headers %}<th>{{ h }}{% if sub %}<small>{{ sub }}</small>{% endif %}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}
<tr class="main{{ ' base' if row.base else '' }}">
{%- for value, under, numeric in row.cells %}<td class="{{ 'n' if numeric else '' }}">
{%- if loop.first %}<details><summary>{{ value }}</summary></details>{% else %}{{ value }}{% endif %}
{%- if under is not none %}<small>{{ under }}</small>{% endif %}</td>{% endfor -%}
</tr>
<tr class="more{{ ' base' if row.base else '' }}"><td></td><td colspan="{{ row.cells | length - 1 }}">{{ row.details | join(' · ') }}</td></tr>
{%- endfor %}</tbody></table></div>
{%- if across %}
<h2>One artifact across devices</h2>
{%- for view in across %}
<h3>{{ view.artifact }} <span class="note">(prompt {{ view.prompt }}, fastest device first)</span></h3>
<div class="wrap"><table><thead><tr>{% for h in across_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{%- for cells in view.rows %}<tr>{% for c in cells %}<td class="{{ '' if loop.index <= 2 else 'n' }}">{{ c }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>
{%- endfor %}
{%- endif %}
<h2>Energy</h2><ul class="note">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
<h2>Charts</h2>{{ charts }}</body></html>
"""
)


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
                "versions": versions(run),
                "ship": ship_status(run),
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
        title=title(runs),
        across=across_devices(table),
        across_headers=[h for _, h in ACROSS_COLUMNS],
        style=Markup(STYLE),
        devices=_devices(runs),
        base_row=baseline["row"],
        base_label=label(baseline),
        headers=[(h, "× row " + str(baseline["row"]) if r else "") for _, h, r in HTML_COLUMNS],
        rows=table_rows(table),
        notes=list(dict.fromkeys(energy_notes(runs))),
        charts=chart_html,
    )
