"""edgerun's peer benchmarks: one workload through edgerun's paths and the tools users would pick
instead (llama.cpp, onnxruntime-genai, optimum + ONNX Runtime, PyTorch), interleaved, one row per
subprocess, with a memory-bandwidth roofline. Run from a checkout: ``python -m benchmarks.peers``.

Not part of the installed wheel. Work files (artifacts, logs, quick results) go to
``benchmarks/work/`` (git-ignored); results of real runs to ``benchmarks/results/``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work"
RESULTS = ROOT / "results"
README = ROOT / "README.md"
