"""ONNX Runtime's prepacked weights, memory-mapped from a per-machine cache (the onnxruntime
backend's `map_prepacked` option).

At load, MLAS repacks every MatMulNBits weight into its own layout (codes, fp32 scales, block
sums) in anonymous memory: a SmolLM2-135M onnx-int4 (100 MiB file) grows the process by 133 MiB,
a Qwen2.5-1.5B-shaped onnx-int8 (1,672 MiB) by 2,095 MiB, in every process that loads it, and
the kernel can only reclaim that memory by killing the process. onnxruntime can write the packed
weights into an optimized model's external data
(``session.save_external_prepacked_constant_initializers``); a session created from that model
maps them instead. Mapped, they are file-backed pages: shared by every process that loads the
model (the bench's workers, `serve`), dropped and re-read by the kernel under memory pressure
rather than OOM-killing, and read instead of recomputed (the load is faster).

The layout depends on the CPU's kernels and the onnxruntime version, so the cache is per machine:
``$EDGERUN_HOME/ort-prepacked/<key>/`` with key = sha256 of the onnxruntime version, the
architecture and CPU flags, the graph as loaded (after an accuracy-level rewrite), the size and
modification time of every file beside it (the weights), and the session options that change
the optimized graph. It holds the optimized graph, its data (the original initializers, which
the packed kernels never touch, and the packed ones: 2.2x the file on disk for a 1.5B onnx-int8) and
``prepacked.json``, the anonymous memory the packing took when the cache was written (what the
mapped pages add once touched; the runtime's memory budget counts it as before). The cache is
written once, atomically; a failure (no space, an onnxruntime that cannot serialize) falls back to
an ordinary load and says why.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, first_line

CACHE_NAME = "ort-prepacked"
MODEL = "model.onnx"
DATA = "model.onnx.data"
FACTS = "prepacked.json"
#: Free disk the cache needs, as a multiple of the weights' size (original + packed + margin).
DISK_FACTOR = 2.6
_MAX_FACTS_BYTES = 4096
_CHUNK = 1 << 20


def cache_key(model_file: Path, source: str | bytes, options: dict[str, Any]) -> str:
    """What the packed layout depends on, hashed (see the module docstring)."""
    import onnxruntime

    from edgerun.device.machine import cpu_flags

    h = hashlib.sha256()
    for part in ("edgerun-ort-prepacked-1", onnxruntime.__version__, platform.machine()):
        h.update(part.encode() + b"\0")
    h.update(" ".join(sorted(cpu_flags() or ())).encode() + b"\0")
    if isinstance(source, bytes):
        h.update(source)
    else:
        with open(source, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    for path in sorted(model_file.parent.iterdir()):
        if path.is_file() and path != model_file:
            stat = path.stat()
            h.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    graph = {
        k: v for k, v in options.items() if k in ("graph_optimization_level", "session_config")
    }
    h.update(json.dumps(graph, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def prepacked_model(
    model_file: Path,
    source: str | bytes,
    options: dict[str, Any],
    make_options: Callable[[], Any],
    weights_bytes: int,
) -> tuple[Path, int]:
    """(the cached optimized model with mapped packed weights, the bytes the packing took),
    writing the cache first where it is missing. make_options() gives the SessionOptions the
    model is loaded with. Raises EdgerunError when the cache cannot be written (the caller
    falls back to an ordinary load)."""
    from edgerun.core.home import cache_dir

    root = cache_dir(CACHE_NAME)
    final = root / cache_key(model_file, source, options)
    if not (final / FACTS).is_file():
        _write(final, source, make_options, weights_bytes)
    return final / MODEL, _packed_bytes(final / FACTS)


def save_optimized(opts: Any, model: Path, data_name: str) -> None:
    """Have the session `opts` configure write its optimized graph to `model`, every
    initializer of 1 KiB or more in the file `data_name` beside it."""
    opts.optimized_model_filepath = str(model)
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", data_name
    )
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )


def _write(final: Path, source: str | bytes, make_options: Callable[[], Any], size: int) -> None:
    import onnxruntime as ort

    from edgerun.core.home import atomic_dir
    from edgerun.device.memory import anonymous_bytes

    free = shutil.disk_usage(final.parent).free
    if free < DISK_FACTOR * size:
        raise EdgerunError(
            f"the mapped prepacked cache needs about {DISK_FACTOR * size / 2**20:.0f} MiB free in"
            f" {final.parent}, {free / 2**20:.0f} MiB is",
            "free disk space or set EDGERUN_HOME elsewhere",
        )
    try:
        with atomic_dir(final) as tmp:
            opts = make_options()
            save_optimized(opts, tmp / MODEL, DATA)
            opts.add_session_config_entry(
                "session.save_external_prepacked_constant_initializers", "1"
            )
            before = anonymous_bytes()
            session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            packed = max(anonymous_bytes() - before, 0)
            del session
            if not (tmp / DATA).is_file():
                raise EdgerunError("onnxruntime wrote no external data", "")
            (tmp / FACTS).write_text(json.dumps({"packed_bytes": packed}))
    except EdgerunError as exc:
        if (final / FACTS).is_file():  # another process wrote it first
            return
        raise EdgerunError(f"cannot write the mapped prepacked cache: {exc.message}") from exc
    except Exception as exc:  # onnxruntime's own exception types, OSError
        first = first_line(exc)
        raise EdgerunError(f"cannot write the mapped prepacked cache: {first}") from exc


def _packed_bytes(path: Path) -> int:
    """The packing's anonymous bytes, as recorded when the cache was written (bounded read)."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read(_MAX_FACTS_BYTES))["packed_bytes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgerunError(f"{path} is damaged: {exc}", f"delete {path.parent}") from exc
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EdgerunError(f"{path} is damaged: packed_bytes {value!r}", f"delete {path.parent}")
    return value
