"""``python -m benchmarks.export_cost``: what producing an artifact costs, edgerun against the peers.

Each pipeline is the command line(s) a user would run, each step a measured child process (wall
time, and peak RSS from wait4: the largest process of the step, its children included). A
pipeline's wall time is the sum of its steps, its peak RSS the largest step's. Outputs are written
to a fresh directory under benchmarks/work/export-cost/ and deleted after their size is taken.

The GGUF peer: llama.cpp's HF converter (convert_hf_to_gguf.py) ships with llama.cpp's sources,
not with llama-cpp-python, so it is not available here; the peer pipeline is edgerun's f16 GGUF
writer (gguf-py, no validation) followed by llama.cpp's own quantizer, with both steps reported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import README, RESULTS, artifacts, machine, weights, work_dir
from benchmarks.proc import failure_line, run_measured

START, END = "<!-- export-cost:start -->", "<!-- export-cost:end -->"
PY = sys.executable


@dataclass
class Pipeline:
    """Commands with {out} (the artifact) and {tmp} (scratch) placeholders, run in order."""

    name: str
    steps: list[list[str]]
    requires: dict[str, str] = field(default_factory=dict)  # import name -> what to install
    edgerun: bool = False


def pipelines(src: Path) -> list[Pipeline]:
    """Every pipeline compared, for the HF checkpoint `src`."""
    out, tmp = Path("{out}"), Path("{tmp}")
    ours = [
        Pipeline(f"edgerun export {fmt}{' --no-validate' * nv}",
                 [artifacts.edgerun_export_cmd(src, fmt, out, ["--no-validate"] if nv else ["--force"])],
                 edgerun=True)
        for fmt in ("onnx-int4", "gguf-q4_k_m") for nv in (False, True)
    ]  # fmt: skip
    f16 = artifacts.edgerun_export_cmd(src, "gguf-f16", tmp / "f16", ["--no-validate"])
    quant = [PY, "-m", "benchmarks.peer_exports", "llama-quantize"]
    return [
        *ours,
        Pipeline("optimum-cli export onnx + ORT MatMulNBits int4",
                 [artifacts.optimum_fp32_cmd(src, tmp / "fp32"),
                  artifacts.ort_int4_cmd(tmp / "fp32", out)],
                 {"optimum.exporters.onnx": "pip install optimum-onnx"}),
        Pipeline("onnxruntime-genai builder int4",
                 [artifacts.genai_int4_cmd(src, out, tmp / "cache")],
                 {"onnxruntime_genai": "pip install onnxruntime-genai"}),
        Pipeline("gguf-py f16 (edgerun) + llama.cpp quantize q4_k_m",
                 [f16, [*quant, "{tmp}/f16", "{out}/model.gguf", "q4_k_m"]],
                 {"llama_cpp": "pip install llama-cpp-python"}, edgerun=True),
    ]  # fmt: skip


def _missing(p: Pipeline) -> str | None:
    if p.edgerun and artifacts.edgerun_can_export():
        return artifacts.edgerun_can_export()
    for name, install in p.requires.items():
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed ({install})"
        except ImportError:
            return f"{name} is not installed ({install})"
    return None


def _expand(cmd: list[str], out: Path, tmp: Path) -> list[str]:
    return [c.replace("{out}", str(out)).replace("{tmp}", str(tmp)) for c in cmd]


def run_pipeline(p: Pipeline, root: Path) -> dict[str, Any]:
    """Run every step of `p` once in a fresh directory; its steps, totals and output size."""
    shutil.rmtree(root, ignore_errors=True)
    out, tmp = root / "out", root / "tmp"
    tmp.mkdir(parents=True)
    out.mkdir()
    steps = []
    try:
        for i, cmd in enumerate(p.steps):
            log = work_dir() / "logs" / f"export-cost-{root.name}-{i}.log"
            result = run_measured(_expand(cmd, out, tmp), log)
            steps.append(result.to_json())
            if result.rc != 0:
                return {"status": "failed", "reason": failure_line(log), "steps": steps}
        return {
            "status": "ok",
            "wall_s": sum(s["wall_s"] for s in steps),
            "peak_rss_bytes": max(s["peak_rss_bytes"] for s in steps),
            "output_bytes": weights.artifact_bytes(out),
            "steps": steps,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_all(src: Path, only: str | None, reps: int) -> list[dict[str, Any]]:
    """Every selected pipeline, `reps` times each (interleaved); medians of wall time and RSS."""
    terms = [t.strip().lower() for t in (only or "").split(",") if t.strip()]
    chosen = [p for p in pipelines(src) if not terms or any(t in p.name.lower() for t in terms)]
    rows: dict[str, dict[str, Any]] = {
        p.name: {"name": p.name, "runs": [], "reason": _missing(p)} for p in chosen
    }
    for _ in range(reps):
        for i, p in enumerate(chosen):
            row = rows[p.name]
            if row["reason"] is None:
                print(f"exporting: {p.name} ...", flush=True)
                row["runs"].append(run_pipeline(p, work_dir() / "export-cost" / f"p{i}"))
    for row in rows.values():
        ok = [r for r in row["runs"] if r["status"] == "ok"]
        row["status"] = "skipped" if row["reason"] else ("ok" if ok else "failed")
        if row["status"] == "failed":
            row["reason"] = row["runs"][-1]["reason"]
        for key in ("wall_s", "peak_rss_bytes", "output_bytes"):
            row[key] = statistics.median(r[key] for r in ok) if ok else None
    return list(rows.values())


def markdown(results: dict[str, Any]) -> str:
    """The README block of an export-cost run."""
    m = results["machine"]
    lines = [
        f"Run `python -m benchmarks.export_cost` at {results['created']} on {m['cpu']}, "
        f"{m['logical_cores']} logical cores (1-min load {m['loadavg'][0]:.2f}); model "
        f"{results['model']}; median of {results['reps']} run(s).",
        "",
        "| pipeline | wall s | peak RSS MB | output MB | steps (wall s / peak RSS MB) |",
        "|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {r['reason']} | | | |")
            continue
        last = [s for s in r["runs"] if s["status"] == "ok"][-1]["steps"]
        steps = "; ".join(f"{s['wall_s']:.0f} / {s['peak_rss_bytes'] / 1e6:.0f}" for s in last)
        lines.append(
            f"| {r['name']} | {r['wall_s']:.0f} | {r['peak_rss_bytes'] / 1e6:.0f} | "
            f"{r['output_bytes'] / 1e6:.0f} | {steps} |"
        )
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="smollm2-135m", show_default=True, help="edgerun pull source.")
@click.option("--only", help="Comma list of terms; pipelines whose name contains one run.")
@click.option("--reps", type=click.IntRange(1), default=1, show_default=True)
@click.option("--no-readme", is_flag=True, help="Do not write the table into the README.")
@click.option("--out", type=click.Path(path_type=Path), help="Results JSON path.")
def main(model: str, only: str | None, reps: int, no_readme: bool, out: Path | None) -> None:
    """Measure wall time and peak RSS of edgerun export against the peers' export paths."""
    from benchmarks.render import update_readme
    from edgerun.core.home import atomic_write_json
    from edgerun.sources.resolve import resolve

    src = resolve(model).path
    desc = machine.describe()
    rows = measure_all(src, only, reps)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results = {"schema": "edgerun-export-cost/1", "created": created, "model": model,
               "reps": reps, "machine": desc, "loadavg_end": list(os.getloadavg()), "rows": rows}  # fmt: skip
    path = out or RESULTS / f"export-cost-{created.replace(':', '').replace('-', '')}.json"
    atomic_write_json(path, results)
    block = markdown(results)
    click.echo(block)
    if not no_readme:
        update_readme(README, block, START, END)
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
