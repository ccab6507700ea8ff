"""Running the rows: one process per row, measurements interleaved (A B C A B C ...).

Every row process loads its model once; then each round asks every row in turn for one greedy
generation of every prompt length. The first `warmup` rounds are thrown away. Between two
measurements the suite pauses `settle_s`, so the threads of the row before have gone to sleep.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from benchmarks.pool import Worker, WorkerError
from benchmarks.report import measure
from benchmarks.workload import RowSpec, Workload


def new_result(spec: RowSpec) -> dict[str, Any]:
    """The result dict of a row before it runs (skipped rows stay like this, with the reason)."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "runner": spec.runner,
        "fmt": spec.fmt,
        "artifact": spec.artifact,
        "status": "skipped" if spec.skip else "ok",
        "reason": spec.skip,
        "size_bytes": spec.meta.get("size_bytes"),
        "touched_bytes": spec.meta.get("touched_bytes"),
        "meta": {k: v for k, v in spec.meta.items() if k not in ("size_bytes", "touched_bytes")},
        "peak_rss_bytes": None,
        "reps": {},
        "tokens": {},
    }


def _fail(result: dict[str, Any], reason: str) -> None:
    result["status"] = "failed"
    result["reason"] = reason


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def start_workers(
    specs: list[RowSpec], results: dict[str, dict[str, Any]], w: Workload, logs: Path, max_len: int
) -> list[tuple[RowSpec, Worker]]:
    """Start one process per runnable row, one at a time; a row that fails to load is failed."""
    live: list[tuple[RowSpec, Worker]] = []
    for spec in specs:
        if spec.skip:
            continue
        print(f"loading {spec.name} ...", flush=True)
        worker = Worker(spec, w.threads, max_len, logs / f"row-{_slug(spec.name)}.log")
        try:
            ready = worker.ready()
        except WorkerError as exc:
            _fail(results[spec.name], f"load failed: {exc} (log: {worker.log_path})")
            worker.close()
            continue
        results[spec.name].update(
            load_s=ready["load_s"], rss_after_load_bytes=ready["rss_bytes"], info=ready["info"]
        )
        live.append((spec, worker))
    return live


def _record(result: dict[str, Any], reply: dict[str, Any], length: int, w: Workload) -> None:
    if len(reply["stamps"]) != w.gen_tokens:
        raise WorkerError(f"produced {len(reply['stamps'])} tokens, not {w.gen_tokens}")
    key = str(length)
    rep = measure(reply["t0"], reply["stamps"], length)
    if reply.get("extra"):
        rep["extra"] = reply["extra"]
    result["reps"].setdefault(key, []).append(rep)
    result["tokens"].setdefault(key, reply["tokens"])
    result["peak_rss_bytes"] = reply["peak_rss_bytes"]


def run_rows(
    specs: list[RowSpec], prompts: dict[int, list[int]], w: Workload, logs: Path
) -> list[dict[str, Any]]:
    """Run every runnable row of `specs`, interleaved; the result dict of every row, in order."""
    from rich.progress import Progress

    results = {spec.name: new_result(spec) for spec in specs}
    max_len = max(prompts) + w.gen_tokens + 16
    live = start_workers(specs, results, w, logs, max_len)
    rounds = w.warmup + w.reps
    try:
        with Progress(transient=False) as progress:
            task = progress.add_task("measuring", total=rounds * len(prompts) * len(live))
            for rnd in range(rounds):
                for length, ids in prompts.items():
                    for spec, worker in live:
                        result = results[spec.name]
                        progress.update(task, advance=1, description=f"round {rnd + 1}/{rounds}")
                        if result["status"] != "ok":
                            continue
                        try:
                            reply = worker.generate(ids, w.gen_tokens)
                            if rnd >= w.warmup:
                                _record(result, reply, length, w)
                        except WorkerError as exc:
                            _fail(result, f"{exc} (log: {worker.log_path})")
                        time.sleep(w.settle_s)
    finally:
        for _, worker in live:
            worker.close()
    return [results[spec.name] for spec in specs]
