"""``python -m benchmarks.peers``: edgerun against the tools users would pick instead, in one run.

Plans the rows (building missing artifacts once), probes memory bandwidth, runs every row in its
own process with the measurements interleaved, and writes the ratio table: to the terminal, to a
timestamped JSON (benchmarks/results/, or benchmarks/work/results/ for --quick runs) and between the
results markers of benchmarks/README.md (full runs only).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import README, RESULTS, machine, model_key, render, report, work_dir
from benchmarks.workload import Workload, ids_digest, prompt_ids
from edgerun.core.errors import EdgerunError

SCHEMA = "edgerun-bench-peers/1"


def merge_bandwidth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The STREAM probes before and after the rows: the best of each kernel over both (STREAM
    reports the best pass); the roofline uses the larger kernel's."""
    best = {k: max(before[k], after[k]) for k in ("copy_gb_s", "triad_gb_s", "gb_s")}
    return {**before, **best, "probes": [before, after]}


def run(w: Workload, only: str | None, build: bool, refresh: bool, quick: bool) -> dict[str, Any]:
    """Plan, probe, run and summarize; returns the results document (see README for its schema)."""
    from benchmarks.artifacts import Prep
    from benchmarks.plan import plan
    from benchmarks.suite import run_rows
    from edgerun.bench.bandwidth import stream
    from edgerun.sources.resolve import resolve

    checkpoint = resolve(w.model).path
    started = time.time()
    prep = Prep(
        checkpoint=checkpoint, work=work_dir() / model_key(w.model), build=build, refresh=refresh
    )
    specs = plan(prep, only)
    if not specs:
        raise EdgerunError(f"no row matches --only {only!r}", "see the row names with --dry-run")
    prompts = {n: prompt_ids(checkpoint / "tokenizer.json", n, w.seed) for n in w.prompt_tokens}
    desc = machine.describe()
    busy = bool(desc["loadavg"] and desc["loadavg"][0] > 0.5 * (desc["logical_cores"] or 1))
    if busy:
        print(
            f"warning: load average {desc['loadavg'][0]:.2f}: timings are not results", flush=True
        )
    before = stream(w.threads)
    rows = run_rows(specs, prompts, w, work_dir() / "logs")
    bandwidth = merge_bandwidth(before, stream(w.threads))
    summary = report.summarize(rows, bandwidth["gb_s"])
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m benchmarks.peers " + shlex.join(sys.argv[1:]),
        "quick": quick,
        "busy": busy,
        "wall_s": round(time.time() - started, 1),
        "workload": w.to_json(),
        "prompts": {str(n): ids_digest(ids) for n, ids in prompts.items()},
        "machine": desc,
        "loadavg_end": list(os.getloadavg()),
        "bandwidth": bandwidth,
        "builds": {k: v.to_json() for k, v in prep.builds.items()},
        "rows": rows,
        "summary": summary,
        "head_to_head": report.head_to_head(summary),
        "same_file": report.same_file(summary),
        "targets": report.targets(rows),
    }


def save(results: dict[str, Any], quick: bool, out: Path | None, readme: bool) -> Path:
    """Write the JSON (and the README table for full runs); returns the JSON path."""
    from edgerun.core.home import atomic_write_json

    stamp = results["created"].replace(":", "").replace("-", "")
    path = out or (work_dir() / "results" if quick else RESULTS) / f"peers-{stamp}.json"
    atomic_write_json(path, results)
    if readme and not quick:
        render.update_readme(README, render.markdown(results))
    return path


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected a comma list of integers, got {value!r}") from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Smoke test: 1 rep, 32-token prompt, 16 new tokens.")
@click.option("--reps", type=click.IntRange(1), help="Measured repetitions (default 5).")
@click.option("--warmup", type=click.IntRange(0), help="Warm-up rounds (default 1).")
@click.option("--prompt-tokens", help="Comma list of prompt lengths (default 128,512).")
@click.option("--gen-tokens", type=click.IntRange(2), help="New tokens (default 128).")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True)
@click.option("--model", default="smollm2-135m", show_default=True, help="edgerun pull source.")
@click.option("--only", help="Comma list: rows whose name contains a term, or 'peer'/'edgerun'.")
@click.option("--no-build", is_flag=True, help="Use cached artifacts only; skip rows without.")
@click.option("--refresh", is_flag=True, help="Rebuild edgerun's artifacts (exporter changed).")
@click.option("--dry-run", is_flag=True, help="Plan the rows and show what would be skipped.")
@click.option("--no-readme", is_flag=True, help="Do not write the table into the README.")
@click.option("--out", type=click.Path(path_type=Path), help="Results JSON path.")
def main(
    quick: bool, reps: int | None, warmup: int | None, prompt_tokens: str | None,
    gen_tokens: int | None, threads: int, model: str, only: str | None, no_build: bool,
    refresh: bool, dry_run: bool, no_readme: bool, out: Path | None,
) -> None:  # fmt: skip
    """Run W1 through edgerun and its peers, interleaved, and write the ratio table."""
    w = Workload.quick(model, threads) if quick else Workload(model=model, threads=threads)
    w.reps = reps or w.reps
    w.warmup = w.warmup if warmup is None else warmup
    w.prompt_tokens = _ints(prompt_tokens) if prompt_tokens else w.prompt_tokens
    w.gen_tokens = gen_tokens or w.gen_tokens
    try:
        if dry_run:
            _dry_run(w, only, not no_build)
            return
        results = run(w, only, build=not no_build, refresh=refresh, quick=quick)
    except EdgerunError as exc:
        raise click.ClickException(str(exc)) from exc
    render.print_table(results)
    path = save(results, quick, out, readme=not no_readme)
    click.echo(f"results: {path} ({results['wall_s']:.0f} s)")


def _dry_run(w: Workload, only: str | None, build: bool) -> None:
    from benchmarks.artifacts import Prep
    from benchmarks.plan import plan
    from edgerun.sources.resolve import resolve

    checkpoint = resolve(w.model).path
    for spec in plan(
        Prep(checkpoint=checkpoint, work=work_dir() / model_key(w.model), build=build), only
    ):
        state = f"skip: {spec.skip}" if spec.skip else f"run: {spec.artifact}"
        click.echo(f"{spec.kind:8} {spec.name:36} {state}")


if __name__ == "__main__":
    main()
