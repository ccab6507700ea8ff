"""The machine a run happened on (its memory bandwidth: edgerun.bench.bandwidth)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import ROOT

# CPU flags that decide which kernels the runtimes pick (the rest of /proc/cpuinfo is noise here).
FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve",
    "i8mm",
)  # fmt: skip
PACKAGES = (
    "edgerun", "numpy", "onnxruntime", "onnxruntime-genai", "llama_cpp_python", "torch",
    "transformers", "optimum", "optimum-onnx", "onnx", "gguf",
)  # fmt: skip


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags", "Features") and key not in info:
            info[key] = value.strip()
    return info


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the rows use (None: not installed)."""
    from edgerun.core.versions import versions as installed

    return installed(PACKAGES, missing=True)


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when benchmarks or edgerun have local edits)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "edgerun", "exporters", "benchmarks"],
            cwd=ROOT.parent,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{sha}+dirty" if sha and dirty else sha or None


def describe() -> dict[str, Any]:
    """CPU model, cores, relevant flags, RAM, kernel, Python, load average and library versions."""
    import psutil

    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "ram_bytes": psutil.virtual_memory().total,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "libraries": versions(),
        "git": git_commit(),
    }
