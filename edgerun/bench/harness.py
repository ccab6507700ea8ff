"""Drive one worker subprocess per artifact through a workload, interleaving repetitions
(A B C A B C ...) so drift on a noisy machine hits every artifact alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.bench.metrics import rep_metrics, summarize_artifact
from edgerun.bench.worker import DEFAULT_LOADER
from edgerun.bench.workload import Workload
from edgerun.errors import EdgerunError
from edgerun.manifest import MANIFEST_NAME, read_manifest
from edgerun.power.account import EnergyAccount

Progress = Callable[[str], None]


class WorkerProcess:
    """The parent's end of one `python -m edgerun.bench.worker`."""

    def __init__(self, artifact: Path) -> None:
        self.artifact = artifact
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def call(self, **request: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; a failure becomes an EdgerunError."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            self.proc.wait(timeout=30)
            raise EdgerunError(
                f"the benchmark worker for {self.artifact} died (exit status {self.proc.returncode})",
                f"its last words: {self._stderr_tail()}",
            )
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise EdgerunError(
                f"{self.artifact}: {reply['error']}", reply.get("hint") or "run with -v for details"
            )
        return reply

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "nothing on stderr"

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


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
    from edgerun.integrity import sha256_file

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


def _load(worker: WorkerProcess, workload: Workload, loader: str) -> dict[str, Any]:
    reply = worker.call(
        op="load",
        path=str(worker.artifact),
        profile=workload.profile,
        threads=workload.threads,
        context=workload.ctx,
        loader=loader,
    )
    workload.check_context(reply.get("context_length"), str(worker.artifact))
    info = reply.get("info") or {}
    return {
        "load_s": reply["load_s"],
        "memory_after_load": reply["memory"],
        "backend": info.get("backend"),
        "providers": info.get("providers"),
        "threads": info.get("threads"),
        "profile_id": info.get("profile_id"),
        "profile_reason": info.get("profile_reason"),
        "runtime_info": {k: v for k, v in info.items() if k != "manifest"},
    }


def _one_rep(
    worker: WorkerProcess, workload: Workload, prompt: int, energy: EnergyAccount, rep: int
) -> dict[str, Any]:
    reply = worker.call(
        op="run", prompt_tokens=prompt, gen_tokens=workload.gen_tokens, seed=workload.seed
    )
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
) -> dict[str, Any]:
    """Benchmark `artifacts` under `workload`; return one run (see edgerun.bench.results).

    Raises EdgerunError for a path that is not an artifact, a prompt longer than the context, or
    a worker that fails."""
    step = progress or (lambda _msg: None)
    entries = [describe_artifact(Path(a)) for a in artifacts]
    for entry in entries:
        workload.check_context(entry["context_length"], entry["path"])
    workers: list[WorkerProcess] = []
    order: list[list[int]] = []
    try:
        energy.start()
        step("idle baseline")
        energy.measure_idle(idle_seconds)
        workers = [WorkerProcess(Path(e["path"])) for e in entries]
        for entry, worker in zip(entries, workers, strict=True):
            step(f"load {entry['name']}")
            entry.update(_load(worker, workload, loader))
            entry["reps"] = []
            for _ in range(workload.warmup):
                for prompt in workload.prompt_tokens:
                    step(f"warmup {entry['name']} p{prompt}")
                    worker.call(
                        op="run",
                        prompt_tokens=prompt,
                        gen_tokens=workload.gen_tokens,
                        seed=workload.seed,
                    )
        for rep in range(workload.reps):
            for index, (entry, worker) in enumerate(zip(entries, workers, strict=True)):
                order.append([rep, index])
                for prompt in workload.prompt_tokens:
                    step(f"rep {rep + 1}/{workload.reps} {entry['name']} p{prompt}")
                    entry["reps"].append(_one_rep(worker, workload, prompt, energy, rep))
    finally:
        for worker in workers:
            worker.close()
        energy.stop()
    for entry in entries:
        entry["summary"] = summarize_artifact(entry)
    return {
        "workload": workload.to_json(),
        "power": energy.header(),
        "order": order,
        "artifacts": entries,
    }
