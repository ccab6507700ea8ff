"""The per-artifact benchmark subprocess, ``python -m edgerun.bench.worker``, and both ends of its
protocol: :class:`WorkerProcess` (with :func:`load_worker`) is the parent's, :class:`Worker` the
child's. `edgerun bench`, `edgerun tune` and the lab drive workers through the parent's end.

It loads one model once (``edgerun.load``, or any loader with its signature whose model has
``generate(ids, max_tokens, temperature, ignore_eos)`` yielding chunks with a ``token_id``: the
peers in benchmarks/ plug in here) and answers JSON-line requests on its protocol channel, so the
memory it reports belongs to that model alone. Libraries that print to stdout cannot corrupt the
protocol: the original stdout is kept for it and fd 1 is pointed at stderr.

Requests and replies (one JSON object per line)::

    {"op": "load", "path", "profile"[, "profile_reason"], "threads", "context", "loader"[, "options", "affinity"]}  -> {"ok", "load_s", "info", "context_length", "memory"}
    {"op": "run", "prompt_tokens", "gen_tokens", "seed"[, "ids"]}  -> {"ok", "t_start", "token_times", "tokens", "memory"}
    {"op": "quit"}
    failures                                               -> {"ok": false, "error", "hint", "traceback"}

"profile" is the profile's id or TOML path (null: the loader resolves one); with
"profile_reason", the parent resolved it (why it was chosen), and the loader is given it resolved
(edgerun.device.resolve.Resolved): the worker reads it by name and never detects the machine.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from edgerun.bench.memory import PeakRss
from edgerun.bench.workload import Workload, synthetic_prompt
from edgerun.core.errors import EdgerunError
from edgerun.device.profile import get_profile
from edgerun.device.resolve import Resolved

DEFAULT_LOADER = "edgerun:load"


class WorkerProcess:
    """The parent's end of one `python -m edgerun.bench.worker`.

    env: variables added to this process's environment; log: a file for the worker's stderr
    (default: a temporary one); timeout_s: the longest wait for one reply (default: no limit)."""

    def __init__(
        self,
        artifact: Path,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.artifact = artifact
        self.log = log
        self.timeout_s = timeout_s
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        self.stderr = log.open("w+") if log else tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the worker
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )

    def call(self, **request: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; a failure becomes an EdgerunError."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self._readline()
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

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        if self.timeout_s is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
            if not ready:
                self.proc.kill()
                raise EdgerunError(
                    f"the benchmark worker for {self.artifact} did not answer in "
                    f"{self.timeout_s:.0f} s",
                    f"its last words: {self._stderr_tail()}",
                )
        return self.proc.stdout.readline()

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


def load_worker(
    worker: WorkerProcess,
    workload: Workload,
    loader: str,
    resolved: Resolved | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Load the worker's artifact under `workload` (extra: the request's "options" and
    "affinity", see edgerun.bench.worker); returns the load facts a result entry records.
    `resolved`: the profile the parent resolved, sent with why (None: the worker resolves
    workload.profile)."""
    reply = worker.call(
        op="load",
        path=str(worker.artifact),
        **_profile_fields(workload.profile, resolved),
        threads=workload.threads,
        context=workload.ctx,
        loader=loader,
        **extra,
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


def _profile_fields(named: str | None, resolved: Resolved | None) -> dict[str, Any]:
    """The load request's "profile" (and "profile_reason" when the parent resolved it)."""
    if resolved is None or resolved.profile is None:
        return {"profile": named}
    return {"profile": named or resolved.profile.id, "profile_reason": resolved.reason}


def _loader_profile(req: dict[str, Any]) -> str | Resolved | None:
    """What the loader is given as its profile: the parent's resolved one, read by name (no
    detection), when the request says why it was chosen; else the name as sent."""
    if req.get("profile_reason") is None or req.get("profile") is None:
        return req.get("profile")
    return Resolved(get_profile(str(req["profile"])), str(req["profile_reason"]))


class Worker:
    """Holds the loaded model and serves requests."""

    def __init__(self) -> None:
        self.model: Any = None
        self.memory = PeakRss().start()
        self.prompts: dict[tuple[int, int], list[int]] = {}

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        module, attr = req.get("loader", DEFAULT_LOADER).split(":")
        loader = getattr(importlib.import_module(module), attr)
        options = {k: req[k] for k in ("threads", "context") if req.get(k) is not None}
        options.update(req.get("options") or {})  # backend and its options (edgerun tune)
        if req.get("affinity"):
            from edgerun.backends.affinity import pin_cpus

            warning = pin_cpus(req["affinity"])
            if warning:
                raise RuntimeError(warning)
        t0 = time.perf_counter()
        self.model = loader(req["path"], profile=_loader_profile(req), **options)
        load_s = time.perf_counter() - t0
        if getattr(self.model, "prompt_cache", None) is not None:
            # every repetition sends the same prompt: reusing its KV cache would time nothing
            self.model.prompt_cache = None
        info = self.model.info.to_json() if hasattr(self.model, "info") else {}
        return {
            "load_s": load_s,
            "info": info,
            "context_length": getattr(self.model, "context_length", None),
            "memory": self.memory.snapshot(),
        }

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        prompt = req.get("ids") or self._synthetic(
            int(req["prompt_tokens"]), int(req.get("seed", 0))
        )
        token_times: list[float] = []
        tokens: list[int | None] = []
        t_start = time.monotonic()
        for chunk in self.model.generate(
            prompt, max_tokens=int(req["gen_tokens"]), temperature=0.0, ignore_eos=True
        ):
            token_times.append(time.monotonic())
            tokens.append(chunk.token_id)
        return {
            "t_start": t_start,
            "token_times": token_times,
            "tokens": tokens,
            "memory": self.memory.snapshot(),
        }

    def _synthetic(self, n_tokens: int, seed: int) -> list[int]:
        if (n_tokens, seed) not in self.prompts:
            self.prompts[n_tokens, seed] = synthetic_prompt(self.model.tokenizer, n_tokens, seed)
        return self.prompts[n_tokens, seed]

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "load":
            return self.load(req)
        if op == "run":
            if self.model is None:
                raise RuntimeError("run before load")
            return self.run(req)
        raise RuntimeError(f"unknown op {op!r}")

    def close(self) -> None:
        self.memory.stop()
        if self.model is not None and hasattr(self.model, "close"):
            self.model.close()


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "ok": False,
        "error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
        "hint": getattr(exc, "hint", None),
        "traceback": traceback.format_exc(),
    }


def serve(requests: TextIO, replies: TextIO) -> None:
    """Answer requests until EOF or {"op": "quit"}."""
    worker = Worker()
    try:
        for line in requests:
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            try:
                reply = {"ok": True, **worker.handle(req)}
            except Exception as exc:  # reported to the parent, which raises it as an EdgerunError
                reply = _error(exc)
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    finally:
        worker.close()


def main() -> None:
    """Entry point: keep the real stdout for the protocol, send everything else to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, channel)


if __name__ == "__main__":
    main()
