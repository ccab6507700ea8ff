"""``python -m benchmarks.fidelity``: every ONNX int4 recipe and GGUF type on two references.

For each reference (the demo checkpoint, on a Q4_1 grid, and the off-grid one made by
``benchmarks.offgrid``), each variant is made by the real ``edgerun export`` pipeline (validated
on the shipped eval text, with the export's decode probe), and then all ONNX int4 / GGUF
artifacts of a reference are timed against each other in one process, interleaved: per round each
artifact decodes the same prompt once, and the speed column is the median over rounds. Writes
benchmarks/results/fidelity-<time>.json; ``--readme`` rewrites the table in benchmarks/README.md
and ``--plot`` draws the quality-vs-speed plot beside it (matplotlib).

    .venv/bin/python -m benchmarks.fidelity --offgrid $EDGERUN_HOME/offgrid/smollm2-135m-offgrid

About 25 minutes on 2 cores (each export call re-runs the PyTorch reference).
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import README, RESULTS, machine, work_dir

START, END = "<!-- fidelity:start -->", "<!-- fidelity:end -->"
# (label, export format, ExportOptions fields)
VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("onnx-int4 q4-pure (RTN sym)", "onnx-int4", {"recipe": "q4-pure", "symmetric": True}),
    ("onnx-int4 q4-pure asym", "onnx-int4", {"recipe": "q4-pure", "symmetric": False}),
    ("onnx-int4 q4-head8 sym", "onnx-int4", {"recipe": "q4-head8", "symmetric": True}),
    ("onnx-int4 q4-mixed sym", "onnx-int4", {"recipe": "q4-mixed", "symmetric": True}),
    ("onnx-int4 q4-mixed asym (default)", "onnx-int4", {"recipe": "q4-mixed"}),
    ("onnx-int4 hqq (q4-pure)", "onnx-int4", {"recipe": "q4-pure", "algorithm": "hqq"}),
    ("onnx-int4 --target-kl 0.1 sym", "onnx-int4", {"target_kl": 0.1, "symmetric": True}),
    ("onnx-int8", "onnx-int8", {}),
]
GGUF = ["gguf-q4_0", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q8_0"]
BASELINE = VARIANTS[0][0]  # speeds are also given as paired ratios against this row
# --set imatrix: the default onnx-int4 and gguf-q4_k_m without and with the importance
# statistics (issue 23); one export call per setting, its label suffixed to each format.
IMATRIX_JOBS: list[tuple[str, list[str], dict[str, Any]]] = [
    ("no imatrix", ["onnx-int4", "gguf-q4_k_m"], {"imatrix": False}),
    ("+ imatrix", ["onnx-int4", "gguf-q4_k_m"], {"imatrix": True}),
]


def _jobs(which: str) -> list[tuple[str, list[str], dict[str, Any]]]:
    if which == "imatrix":
        return IMATRIX_JOBS
    return [(label, [fmt], opts) for label, fmt, opts in VARIANTS] + [("gguf", GGUF, {})]


def export_variants(
    source: str, out: Path, threads: int, which: str = "all"
) -> list[dict[str, Any]]:
    """Export every variant of `source` under `out`; one row per artifact (failures too)."""
    from edgerun.exporters.pipeline import export

    rows = []
    jobs = _jobs(which)
    for i, (label, formats, opts) in enumerate(jobs):
        target = out / f"v{i}"
        click.echo(f"  {label} ...", err=True)
        results = export(
            source, formats, target, overwrite=True, force=True, threads=threads,
            progress=False, **opts,
        )  # fmt: skip
        for r in results:
            rows.append(_row(label if len(formats) == 1 else _multi(label, r.format), r))
    return rows


def _multi(label: str, fmt: str) -> str:
    return fmt if label == "gguf" else f"{fmt} {label}"


def _row(label: str, result: Any) -> dict[str, Any]:
    manifest = result.manifest or {}
    v = result.validation or {}
    quant = manifest.get("quant") or {}
    return {
        "label": label,
        "format": result.format,
        "path": str(result.path) if result.path else None,
        "status": result.status,
        "reason": result.reason,
        "bits_per_weight": (manifest.get("size") or {}).get("bits_per_weight"),
        "model_bytes": (manifest.get("size") or {}).get("model_bytes"),
        "ppl_ratio": v.get("ppl_ratio"),
        "mean_kl": v.get("mean_kl"),
        "top1": v.get("top1_agreement"),
        "probe_ms": (manifest.get("probe") or {}).get("decode_ms_per_token"),
        "bits_summary": quant.get("bits_summary"),
        "recipe": (quant.get("recipe") or {}).get("name"),
        "importance": quant.get("importance") or quant.get("imatrix"),
    }


def interleaved_speed(
    rows: list[dict[str, Any]], rounds: int, tokens: int, threads: int, only: list[str]
) -> None:
    """Decode ms/token of every written artifact (or those whose label contains a term of
    `only`), interleaved rounds in one process: the median, and the median of per-round ratios
    against the q4-pure row."""
    import edgerun
    from edgerun.exporters.reference import read_eval_text

    paths = [r for r in rows if r["path"] and (not only or any(t in r["label"] for t in only))]
    models = [edgerun.load(r["path"], threads=threads) for r in paths]
    prompt = read_eval_text(None)
    ids = [m.tokenizer.encode(prompt, add_special_tokens=False)[:128] for m in models]
    times: list[list[float]] = [[] for _ in models]
    for rnd in range(rounds + 1):
        for i, model in enumerate(models):
            for _ in model.generate(ids[i], max_tokens=tokens, ignore_eos=True):
                pass
            stats = model.last_stats
            if rnd > 0 and stats.decode_tok_s:  # round 0 warms up
                times[i].append(1e3 / stats.decode_tok_s)
    for row, model, samples in zip(paths, models, times, strict=True):
        row["decode_ms"] = statistics.median(samples) if samples else None
        row["decode_ms_rounds"] = samples
        model.close()
    base = next((t for r, t in zip(paths, times, strict=True) if r["label"] == BASELINE), None)
    for row, samples in zip(paths, times, strict=True):
        if base and len(samples) == len(base):  # per-round paired ratio: speed against q4-pure
            row["speed_vs_q4_pure"] = statistics.median(
                b / t for b, t in zip(base, samples, strict=True)
            )


def markdown(results: dict[str, Any]) -> str:
    """The README table: one block per reference."""
    lines = []
    for ref in results["references"]:
        lines += [
            f"**{ref['name']}** ({ref['source']})",
            "",
            "| artifact | bits/weight | PPL ratio | mean KL | top-1 | decode ms/token | speed vs q4-pure | 8-bit nodes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(ref["rows"], key=lambda r: r["bits_per_weight"] or 99):
            n8 = (r.get("bits_summary") or {}).get("8", 0) if r["format"] == "onnx-int4" else "-"
            lines.append(
                f"| {r['label']} | {_f(r['bits_per_weight'], 2)} | {_f(r['ppl_ratio'], 3)} |"
                f" {_f(r['mean_kl'], 4)} | {_f(r['top1'], 3)} | {_f(r.get('decode_ms'), 2)} |"
                f" {_f(r.get('speed_vs_q4_pure'), 2)} | {n8} |"
            )
        lines.append("")
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot(results: dict[str, Any], path: Path) -> None:
    """Per reference: mean KL against decode ms/token (log axes), and against bits per weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = results["references"]
    fig, axes = plt.subplots(2, len(refs), figsize=(7 * len(refs), 9), squeeze=False)
    for col, ref in enumerate(refs):
        rows = [r for r in ref["rows"] if r.get("decode_ms") and r["mean_kl"]]
        for row_i, (key, xlabel) in enumerate(
            [
                ("decode_ms", "decode ms/token (interleaved median, this machine; log)"),
                ("bits_per_weight", "bits per weight (model bytes x 8 / parameters)"),
            ]
        ):
            ax = axes[row_i][col]
            for r in rows:
                marker = "o" if r["format"].startswith("onnx") else "s"
                ax.scatter(r[key], r["mean_kl"], marker=marker, s=30)
                ax.annotate(r["label"].replace("onnx-int4 ", ""), (r[key], r["mean_kl"]),
                            fontsize=6, xytext=(3, 2), textcoords="offset points")  # fmt: skip
            ax.set_yscale("log")
            if key == "decode_ms":
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean KL vs fp32, held-out text (log)")
            ax.set_title(f"{ref['name']}: o ONNX, s GGUF", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _replace_readme(table: str, stamp: str) -> None:
    text = README.read_text(encoding="utf-8")
    plot_link = f"![mean KL against decode speed and bits per weight](results/fidelity-{stamp}.png)"
    block = (
        f"{START}\n<!-- generated by benchmarks.fidelity, {stamp} -->\n{table}\n{plot_link}\n{END}"
    )
    if START in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text += f"\n## Fidelity\n\n{block}\n"
    README.write_text(text, encoding="utf-8")


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True, help="The demo reference.")
@click.option("--offgrid", type=click.Path(path_type=Path), help="The off-grid reference dir.")
@click.option(
    "--rounds", default=7, show_default=True, help="Interleaved speed rounds (0: keep --reuse's)."
)
@click.option("--tokens", default=64, show_default=True, help="New tokens per speed round.")
@click.option("--threads", default=2, show_default=True)
@click.option("--only", default="", help="Time only rows whose label contains one of these terms.")
@click.option("--readme/--no-readme", default=False, help="Rewrite the README table.")
@click.option(
    "--reuse",
    type=click.Path(path_type=Path, exists=True),
    help="Re-time the artifacts of an earlier results file instead of exporting again.",
)
@click.option("--plot/--no-plot", "draw", default=True, help="Draw fidelity-<time>.png.")
@click.option(
    "--set",
    "which",
    type=click.Choice(["all", "imatrix"]),
    default="all",
    show_default=True,
    help="all: every recipe and GGUF type; imatrix: default onnx-int4 and gguf-q4_k_m without"
    " and with the importance statistics.",
)
def main(
    model: str,
    offgrid: Path | None,
    rounds: int,
    tokens: int,
    threads: int,
    readme: bool,
    reuse: Path | None,
    draw: bool,
    only: str,
    which: str,
) -> None:
    """Export every recipe and GGUF type on each reference; score, time, tabulate."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    refs = [("demo checkpoint (Q4_1 grid)", model)]
    if offgrid:
        refs.append(("off-grid reference (benchmarks.offgrid)", str(offgrid)))
    results: dict[str, Any] = {"machine": machine.describe(), "references": [], "stamp": stamp}
    earlier = json.loads(reuse.read_text())["references"] if reuse else None
    for i, (name, source) in enumerate(refs):
        started = time.perf_counter()
        if earlier is not None:
            rows = earlier[i]["rows"]
        else:
            click.echo(f"{name}: exporting", err=True)
            out = work_dir() / "fidelity" / stamp / str(i)
            rows = export_variants(source, out, threads, which)
        if rounds > 0:
            click.echo(f"{name}: timing {len(rows)} artifacts", err=True)
            interleaved_speed(rows, rounds, tokens, threads, [t for t in only.split(",") if t])
        results["references"].append(
            {"name": name, "source": source, "rows": rows, "wall_s": time.perf_counter() - started}
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"fidelity-{stamp}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    click.echo(table)
    if draw:
        plot(results, RESULTS / f"fidelity-{stamp}.png")
    if readme:
        _replace_readme(table, stamp)
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main()
