"""``python -m benchmarks.scale_combine RUN.json ...``: one cost curve from several scale runs.

The six shapes x three formats do not fit one sitting on a small machine (the 8B shape alone
takes hours on 2 cores), so benchmarks.scale runs in parts; this joins their results into one
file and one plot. A (shape, format) measured in several runs keeps the latest run's row; each row
says which run it came from, and the combined file lists every run with its commit, machine
load and export options, since runs taken on different commits are not one experiment.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import RESULTS
from benchmarks.scale import bench_row, linear_fits, plot


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' shapes merged by (shape, format), later runs first to win, ordered by size."""
    shapes: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["created"]):
        for entry in run["shapes"]:
            into = shapes.setdefault(entry["shape"], {**entry, "exports": [], "peer": None})
            by_format = {row["format"]: row for row in into["exports"]}
            for row in entry["exports"]:
                by_format[row["format"]] = {**row, "from_run": run["created"]}
            into["exports"] = list(by_format.values())
            if entry.get("peer"):
                into["peer"] = {**entry["peer"], "from_run": run["created"]}
    return {
        "what": "edgerun export / run cost by model size (random weights, real shapes), combined",
        "created": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        "runs": [
            {k: run.get(k) for k in ("created", "commit", "export_args", "eval_chars", "validate")}
            | {"loadavg": (run.get("machine") or {}).get("loadavg")}
            for run in runs
        ],
        "machine": runs[-1]["machine"],
        "validate": all(run.get("validate") for run in runs),
        "shapes": sorted(shapes.values(), key=lambda s: s["parameters"]),
    }


def rescore(results: dict[str, Any], logs: Path, models: Path) -> int:
    """Recompute each run row from the bench's own JSON kept under `logs` (<shape>-logs/
    bench-<format>.json) with today's bench_row (e.g. RSS held against the runtime's context
    rather than the trained one). Returns how many rows were recomputed."""
    done = 0
    for shape in results["shapes"]:
        config_file = models / shape["shape"] / "config.json"
        for row in shape["exports"]:
            bench = logs / f"{shape['shape']}-logs" / f"bench-{row['format']}.json"
            if bench.is_file() and config_file.is_file() and row.get("run"):
                row["run"] = bench_row(bench, json.loads(config_file.read_text()))
                done += 1
    return done


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--logs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The runs' work folder (<work>/scale): recompute run rows from the bench JSON kept there.")  # fmt: skip
@click.option("--models", type=click.Path(path_type=Path), default=Path("benchmarks/work/scale-models"),
              show_default=True, help="Where the checkpoints are (their config.json).")  # fmt: skip
def main(runs: tuple[Path, ...], logs: Path | None, models: Path) -> None:
    """Join benchmarks.scale results RUNS into results/scale-combined-<time>.json and a plot."""
    loaded = [json.loads(p.read_text()) for p in runs]
    results = combine(loaded)
    if logs is not None:
        click.echo(f"recomputed {rescore(results, logs, models)} run rows from {logs}")
    results["fits"] = linear_fits(results)
    path = RESULTS / f"scale-combined-{results['created']}.json"
    path.write_text(json.dumps(results, indent=1))
    plot(results, path.with_suffix(".png"))
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
