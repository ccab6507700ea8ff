"""Drive one worker subprocess per artifact through a workload, interleaving repetitions
(A B C A B C ...) so drift on a noisy machine hits every artifact alike."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.bench.busy import BusyWindow
from edgerun.bench.metrics import rep_metrics, summarize_artifact
from edgerun.bench.worker import DEFAULT_LOADER, WorkerProcess, load_worker
from edgerun.bench.workload import Workload
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import MANIFEST_NAME, read_manifest
from edgerun.device.resolve import Resolved
from edgerun.power.account import EnergyAccount

Progress = Callable[[str], None]


def describe_artifact(path: Path) -> dict[str, Any]:
    """Manifest facts recorded with every result: format, size, digest, validation."""
    import hashlib

    if path.is_file() and path.suffix in (".gguf", ".onnx"):
        return _bare_file(path)
    manifest = read_manifest(path)
    raw = (path / MANIFEST_NAME).read_bytes()
    return {
        "path": str(path),
        "name": manifest.get("format", path.name),
        "format": manifest.get("format"),
        "family": manifest.get("family"),
        "precision": manifest.get("precision"),
        "size_bytes": sum(f.get("bytes", 0) for f in manifest.get("files", [])),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "context_length": manifest.get("context_length"),
        "source": manifest.get("source"),
        "validation": manifest.get("validation"),
    }


def _bare_file(path: Path) -> dict[str, Any]:
    """A bare .gguf / .onnx file: no manifest, so no digest of it and no validation."""
    from edgerun.core.integrity import sha256_file

    return {
        "path": str(path),
        "name": path.stem,
        "format": path.suffix[1:],
        "family": path.suffix[1:],
        "precision": None,
        "size_bytes": path.stat().st_size,
        "manifest_sha256": None,
        "file_sha256": sha256_file(path),
        "context_length": None,
        "source": None,
        "validation": None,
    }


@dataclass
class Drive:
    """How the harness drives the workers, beyond the workload. `edgerun bench` uses the defaults;
    benchmarks/ (the peer suite) sets them.

    loader: "module:function" that loads a model in the worker (an entry's "loader" overrides it).
    prompts: fixed prompt ids per prompt length (default: synthetic words, tokenized by each
    model). settle_s: pause after each generation, so the threads of the artifact before go idle.
    keep_going: an artifact whose worker fails gets an "error" and drops out; the others go on
    (default: the run stops with the EdgerunError). tokens: keep every repetition's token ids.
    env, logs, timeout_s: the workers' added environment, a folder for their stderr logs
    (``<name>.log``), the longest wait for one reply. profile: the device profile the parent
    resolved, passed to every worker so none detects the machine again (None: each worker
    resolves the workload's profile itself)."""

    loader: str = DEFAULT_LOADER
    prompts: dict[int, list[int]] | None = None
    settle_s: float = 0.0
    keep_going: bool = False
    tokens: bool = False
    env: dict[str, str] | None = None
    logs: Path | None = None
    timeout_s: float | None = None
    profile: Resolved | None = None

    def generate(self, worker: WorkerProcess, workload: Workload, prompt: int) -> dict[str, Any]:
        """One generation of `prompt` tokens on `worker`, then the settle pause."""
        ids = {"ids": self.prompts[prompt]} if self.prompts else {}
        reply = worker.call(
            op="run",
            prompt_tokens=prompt,
            gen_tokens=workload.gen_tokens,
            seed=workload.seed,
            **ids,
        )
        time.sleep(self.settle_s)
        return reply

    def log_path(self, name: str) -> Path | None:
        """Where the worker of the entry called `name` writes its stderr (None: a temporary file)."""
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return self.logs / f"{slug}.log" if self.logs else None

    def worker(self, entry: dict[str, Any]) -> WorkerProcess:
        log = self.log_path(entry["name"])
        return WorkerProcess(Path(entry["path"]), self.env, log, self.timeout_s)


def _one_rep(reply: dict[str, Any], prompt: int, energy: EnergyAccount, rep: int) -> dict[str, Any]:
    times = reply["token_times"]
    row: dict[str, Any] = {"rep": rep, "prompt_tokens": prompt}
    row.update(rep_metrics(reply["t_start"], times, prompt))
    row["memory"] = reply["memory"]
    row["energy"], row["energy_reason"] = energy.rep_energy(
        reply["t_start"], times[0], times[-1], prompt, len(times) - 1
    )
    return row


def run_bench(
    artifacts: list[Path],
    workload: Workload,
    energy: EnergyAccount,
    idle_seconds: float = 10.0,
    loader: str = DEFAULT_LOADER,
    progress: Progress | None = None,
    profile: Resolved | None = None,
) -> dict[str, Any]:
    """Benchmark `artifacts` under `workload`; return one run (see edgerun.bench.results).
    `profile`: the device profile already resolved for this run (see Drive).

    Raises EdgerunError for a path that is not an artifact, a prompt longer than the context, or
    a worker that fails."""
    entries = [describe_artifact(Path(a)) for a in artifacts]
    for entry in entries:
        workload.check_context(entry["context_length"], entry["path"])
    drive = Drive(loader=loader, profile=profile)
    return run_entries(entries, workload, energy, idle_seconds, drive, progress)


def run_entries(
    entries: list[dict[str, Any]],
    workload: Workload,
    energy: EnergyAccount,
    idle_seconds: float,
    drive: Drive,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The engine under `run_bench`: one worker per entry ({"path", "name"}, optionally "loader";
    what else an entry holds is kept as it is), loaded once, then the repetitions interleaved
    (A B C A B C ...). Fills in each entry's load facts, "reps" and "summary"."""
    step = progress or (lambda _msg: None)
    live: list[tuple[dict[str, Any], WorkerProcess]] = []
    order: list[list[int]] = []
    window = BusyWindow(lambda: [os.getpid(), *(w.proc.pid for _, w in live)])
    try:
        energy.start()
        step("idle baseline")
        energy.measure_idle(idle_seconds)
        window.start()
        for entry in entries:
            entry["reps"] = []
            step(f"load {entry['name']}")
            live.append((entry, drive.worker(entry)))
            try:
                _load_and_warm(entry, live[-1][1], workload, drive, step)
            except EdgerunError as exc:
                _drop(drive, entry, exc)
        for rep in range(workload.reps):
            for index, (entry, worker) in enumerate(live):
                if "error" in entry:
                    continue
                order.append([rep, index])
                try:
                    for prompt in workload.prompt_tokens:
                        step(f"rep {rep + 1}/{workload.reps} {entry['name']} p{prompt}")
                        cores = entry.get("threads") or 1
                        row = measure_rep(worker, workload, prompt, energy, rep, drive, cores)
                        entry["reps"].append(row)
                except EdgerunError as exc:
                    _drop(drive, entry, exc)
        busy = window.stop(own_cores=max((e.get("threads") or 1 for e in entries), default=1))
    finally:
        for _, worker in live:
            worker.close()
        energy.stop()
    for entry in entries:
        entry["summary"] = summarize_artifact(entry)
    return {
        "workload": workload.to_json(),
        "power": energy.header(),
        "order": order,
        "artifacts": entries,
        "busy": busy,
    }


def _drop(drive: Drive, entry: dict[str, Any], exc: EdgerunError) -> None:
    """With keep_going, a failed artifact keeps its error and leaves the run; else it ends it."""
    if not drive.keep_going:
        raise exc
    entry["error"] = f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def _load_and_warm(
    entry: dict[str, Any], worker: WorkerProcess, workload: Workload, drive: Drive, step: Progress
) -> None:
    loader = entry.get("loader", drive.loader)
    entry.update(load_worker(worker, workload, loader, resolved=drive.profile))
    for _ in range(workload.warmup):
        for prompt in workload.prompt_tokens:
            step(f"warmup {entry['name']} p{prompt}")
            drive.generate(worker, workload, prompt)


def measure_rep(
    worker: WorkerProcess,
    workload: Workload,
    prompt: int,
    energy: EnergyAccount,
    rep: int,
    drive: Drive,
    own_cores: int = 1,
) -> dict[str, Any]:
    window = BusyWindow(lambda: [os.getpid(), worker.proc.pid]).start()
    reply = drive.generate(worker, workload, prompt)
    row = _one_rep(reply, prompt, energy, rep)
    row["busy"] = window.stop(own_cores)
    if drive.tokens:
        row["tokens"] = reply["tokens"]
    return row
