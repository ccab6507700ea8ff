"""The per-artifact benchmark subprocess: ``python -m edgerun.bench.worker``.

It loads one model once (``edgerun.load``, or any loader with its signature whose model has
``generate(ids, max_tokens, temperature, ignore_eos)`` yielding chunks with a ``token_id``: the
peers in benchmarks/ plug in here) and answers JSON-line requests on its protocol channel, so the
memory it reports belongs to that model alone. Libraries that print to stdout cannot corrupt the
protocol: the original stdout is kept for it and fd 1 is pointed at stderr.

Requests and replies (one JSON object per line)::

    {"op": "load", "path", "profile", "threads", "context", "loader"[, "options", "affinity"]}  -> {"ok", "load_s", "info", "context_length", "memory"}
    {"op": "run", "prompt_tokens", "gen_tokens", "seed"[, "ids"]}  -> {"ok", "t_start", "token_times", "tokens", "memory"}
    {"op": "quit"}
    failures                                               -> {"ok": false, "error", "hint", "traceback"}
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, TextIO

from edgerun.bench.memory import PeakRss
from edgerun.bench.workload import synthetic_prompt

DEFAULT_LOADER = "edgerun:load"


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
        self.model = loader(req["path"], profile=req.get("profile"), **options)
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
