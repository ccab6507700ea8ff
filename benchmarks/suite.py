"""Running the rows on edgerun.bench's engine: one worker process per row, measurements
interleaved (A B C A B C ...), with the same per-repetition metrics as ``edgerun bench``.

Every row's process loads its model once (through the row's runner, see benchmarks/runners) and
runs the warm-up; then each round asks every row in turn for one greedy generation of every prompt
length, fed the same prompt ids. Between two measurements the suite pauses `settle_s`, so the
threads of the row before have gone to sleep. A row that fails is recorded as failed; the others
go on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks import ROOT, runners
from benchmarks.workload import RowSpec, Workload

REPLY_TIMEOUT_S = 900


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


def _engine(w: Workload, prompts: dict[int, list[int]], logs: Path) -> tuple[Any, Any]:
    """edgerun.bench's workload and drive for the rows: fixed ids, a context that fits them."""
    from edgerun.bench.harness import Drive
    from edgerun.bench.workload import Workload as BenchWorkload

    path = os.pathsep.join(p for p in (str(ROOT.parent), os.environ.get("PYTHONPATH")) if p)
    env = {"OMP_NUM_THREADS": str(w.threads), "PYTHONPATH": path}
    env["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM", "false")
    workload = BenchWorkload(
        prompt_tokens=list(prompts),
        gen_tokens=w.gen_tokens,
        reps=w.reps,
        warmup=w.warmup,
        threads=w.threads,
        ctx=max(prompts) + w.gen_tokens + 16,
    )
    drive = Drive(
        prompts=prompts, settle_s=w.settle_s, keep_going=True, tokens=True, env=env, logs=logs,
        timeout_s=REPLY_TIMEOUT_S,
    )  # fmt: skip
    return workload, drive


def _fold(result: dict[str, Any], entry: dict[str, Any], w: Workload, log: Path | None) -> None:
    """Copy one engine entry (load facts, reps, token ids, errors) into the row's result."""
    if "load_s" in entry:
        result.update(
            load_s=entry["load_s"],
            rss_after_load_bytes=entry["memory_after_load"]["peak_rss"],
            info=entry["runtime_info"],
        )
    for rep in entry["reps"]:
        if rep["gen_tokens"] != w.gen_tokens:
            entry.setdefault("error", f"produced {rep['gen_tokens']} tokens, not {w.gen_tokens}")
            break
        key = str(rep["prompt_tokens"])
        result["tokens"].setdefault(key, rep.pop("tokens"))
        result["peak_rss_bytes"] = rep["memory"]["peak_rss"]
        keep = ("ttft_s", "prefill_tok_s", "decode_tok_s", "gen_tokens", "decode_s", "latency_ms")
        result["reps"].setdefault(key, []).append({k: rep[k] for k in keep})
    if "error" in entry:
        result["status"] = "failed"
        result["reason"] = f"{entry['error']} (log: {log})"


def run_rows(
    specs: list[RowSpec], prompts: dict[int, list[int]], w: Workload, logs: Path
) -> list[dict[str, Any]]:
    """Run every runnable row of `specs`, interleaved; the result dict of every row, in order."""
    from rich.console import Console

    from edgerun.bench.harness import run_entries
    from edgerun.bench.render import progress_bar
    from edgerun.power.account import energy_for

    results = {spec.name: new_result(spec) for spec in specs}
    live = [s for s in specs if not s.skip]
    entries = [
        {"path": s.artifact, "name": s.name, "loader": runners.loader(s.runner)} for s in live
    ]
    workload, drive = _engine(w, prompts, logs)
    total = 1 + len(live) * (1 + (w.warmup + w.reps) * len(prompts))
    with progress_bar(Console(), total) as step:
        body = run_entries(entries, workload, energy_for("none", None, None), 0.0, drive, step)
    for entry in body["artifacts"]:
        _fold(results[entry["name"]], entry, w, drive.log_path(entry["name"]))
    return [results[spec.name] for spec in specs]
