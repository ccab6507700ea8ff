"""The orchestrator's side of the row processes (benchmarks/worker.py): start, ask, stop."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from benchmarks import ROOT
from benchmarks.workload import RowSpec


class WorkerError(RuntimeError):
    """The row process failed, died, or did not answer in time."""


class Worker:
    """One live row process holding one loaded model."""

    def __init__(self, spec: RowSpec, threads: int, max_len: int, log: Path) -> None:
        self.spec = spec
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self._log: IO[str] = log.open("w")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec.to_json())]
        self.proc = subprocess.Popen(
            [*cmd, str(threads), str(max_len)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT.parent,
            env=env,
        )

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise WorkerError(f"no answer in {timeout:.0f} s (log: {self.log_path})")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"the process exited with {self.proc.wait()} (log: {self.log_path})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "unknown error"))
        return reply

    def ready(self, timeout: float = 900) -> dict[str, Any]:
        """Wait for the model to load; its load time, RSS after load and runtime info."""
        return self._read(timeout)

    def generate(self, ids: list[int], max_new: int, timeout: float = 900) -> dict[str, Any]:
        """One greedy generation; the worker's t0, per-token stamps, tokens and peak RSS."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"ids": ids, "max_new": max_new}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerError(f"the process has exited (log: {self.log_path})") from exc
        return self._read(timeout)

    def close(self) -> None:
        """Ask the process to quit; kill it if it does not within 30 s."""
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()
