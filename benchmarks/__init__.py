"""edgerun's peer benchmarks: one workload through edgerun's paths and the tools users would pick
instead (llama.cpp, onnxruntime-genai, optimum + ONNX Runtime, PyTorch), interleaved, one row per
subprocess, with a memory-bandwidth roofline. Run from a checkout: ``python -m benchmarks.peers``.

Not part of the installed wheel. Work files (artifacts, logs, quick results) go to
``benchmarks/work/`` (git-ignored); results of real runs to ``benchmarks/results/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
README = ROOT / "README.md"


def work_dir() -> Path:
    """Where artifacts, logs and quick results go: $EDGERUN_BENCH_WORK, else benchmarks/work."""
    env = os.environ.get("EDGERUN_BENCH_WORK")
    return Path(env) if env else ROOT / "work"


def write_results(name: str, out: dict[str, Any]) -> Path:
    """`out` as benchmarks/results/<name>-<UTC time>.json; its path."""
    path = RESULTS / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    return path


def model_key(model: str) -> str:
    """A directory name for a model source: a demo name as it is, a path as name + short hash."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+", model) and not Path(model).exists():
        return model
    digest = hashlib.sha256(str(Path(model).expanduser().resolve()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name or "model").strip("-")
    return f"{name}-{digest}"
