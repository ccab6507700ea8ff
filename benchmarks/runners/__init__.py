"""One module per way of running a model, each a loader for edgerun.bench's worker: a module
function ``load(path, profile=None, threads=None, context=None)`` whose model has
``generate(ids, max_tokens, temperature, ignore_eos)`` yielding chunks with a ``token_id``, an
``info`` with ``to_json()``, and ``close()``. So every row is timed, and its memory read, by the
same worker and metrics as ``edgerun bench``. ``REQUIRES`` names the imports a runner needs,
checked before a row is planned, so a missing peer is skipped by name. Heavy libraries are imported
inside ``load`` only, in the row's own process."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

# runner name -> module with `load`; one line per runner. edgerun rows use edgerun.load itself.
RUNNERS: dict[str, str] = {
    "llama_cpp": "benchmarks.runners.llamacpp_loop",
    "genai": "benchmarks.runners.genai_loop",
    "optimum": "benchmarks.runners.optimum_ort",
    "torch": "benchmarks.runners.torch_hf",
    "edgerun": "edgerun",
}


@dataclass
class Token:
    """One generated token, as the worker reads it from a chunk."""

    token_id: int


@dataclass
class Info:
    """What a peer reports about itself (library, threads, file), recorded with the row."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.data


def loader(runner: str) -> str:
    """The ``module:function`` edgerun.bench's worker loads `runner`'s models with."""
    return f"{RUNNERS[runner]}:load"


def missing(runner: str) -> str | None:
    """Why `runner` cannot run here (a library is not installed), or None when it can."""
    module = importlib.import_module(RUNNERS[runner])
    for name, install in getattr(module, "REQUIRES", {}).items():
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            return f"{name} is not installed ({install})"
    return None
