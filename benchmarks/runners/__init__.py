"""One module per way of running a model. Each exposes ``load(spec, threads, max_len) -> Runner``
and ``REQUIRES`` (the import names it needs, checked before a row is planned, so a missing peer is
skipped by name). Heavy libraries are imported inside ``load`` only, in the row's own process."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

from benchmarks.workload import RowSpec

# runner name -> module; one line per runner.
RUNNERS: dict[str, str] = {
    "llama_cpp": "benchmarks.runners.llamacpp_loop",
    "genai": "benchmarks.runners.genai_loop",
    "optimum": "benchmarks.runners.optimum_ort",
    "torch": "benchmarks.runners.torch_hf",
    "edgerun": "benchmarks.runners.edgerun_api",
}

Stamp = Callable[[int], None]


class Runner(Protocol):
    """A loaded model that generates greedily and calls ``stamp(token_id)`` as each token appears.
    ``run`` may return a dict of extra per-call numbers (e.g. the runtime's own timings)."""

    def run(self, ids: list[int], max_new: int, stamp: Stamp) -> dict[str, Any] | None: ...

    def info(self) -> dict[str, Any]: ...


def missing(runner: str) -> str | None:
    """Why `runner` cannot run here (a library is not installed), or None when it can."""
    module = importlib.import_module(RUNNERS[runner])
    for name, install in module.REQUIRES.items():
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            return f"{name} is not installed ({install})"
    return None


def load(spec: RowSpec, threads: int, max_len: int) -> Runner:
    """Import the row's runner module and load its model."""
    runner: Runner = importlib.import_module(RUNNERS[spec.runner]).load(spec, threads, max_len)
    return runner
