"""Memory bandwidth as STREAM measures it, and the decode roofline it gives.

Decoding one token at batch 1 reads every weight matrix once, so decode tok/s is bounded by
bandwidth / weight bytes read per token. The bandwidth is measured the way STREAM does
(McCalpin): the Copy (``a = b``) and Triad (``a = b + s*c``) kernels over arrays far larger than
the last-level cache, one stream per thread (each thread owns a contiguous slice of every array),
best of N timed passes, bytes counted as STREAM counts them (copy: 2 arrays, triad: 3 arrays;
write-allocate traffic is not counted). NumPy releases the GIL inside these loops, so the threads
stream in parallel as a runtime's decode threads do.

An earlier probe summed one array with ``np.sum``; NumPy's pairwise float64 reduction does not
saturate memory on a core with wide vectors, so on an AVX-512 machine it read below what the
models achieved (edgerun onnx-fp32 at 139 % "of roofline").
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

MIB = 2**20
MIN_ARRAY_MIB = 256  # STREAM's rule: each array at least 4x the last-level cache; never below this
BLOCK = MIB // 8  # float64 elements per triad block (1 MiB), so s*c stays in L2 between the passes


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of the largest cache of CPU 0 from sysfs (Linux), or None where it is not said."""
    sizes = []
    for index in root.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def default_array_mib() -> int:
    """Per-array size: 4x the last-level cache, at least MIN_ARRAY_MIB MiB."""
    llc = last_level_cache_bytes() or 0
    return max(MIN_ARRAY_MIB, -(-4 * llc // MIB))


def _copy(dst: Any, src: Any) -> None:
    import numpy as np

    np.copyto(dst, src)


def _triad(a: Any, b: Any, c: Any, scalar: float) -> None:
    """a = b + scalar*c in L2-sized blocks: NumPy needs two passes, the first stays in cache."""
    import numpy as np

    for start in range(0, a.size, BLOCK):
        end = start + BLOCK
        np.multiply(c[start:end], scalar, out=a[start:end])
        np.add(a[start:end], b[start:end], out=a[start:end])


def _timed(work: list[threading.Thread]) -> float:
    start = time.perf_counter()
    for thread in work:
        thread.start()
    for thread in work:
        thread.join()
    return time.perf_counter() - start


def stream(
    threads: int | None = None, array_mib: int | None = None, reps: int = 5
) -> dict[str, Any]:
    """Copy and Triad bandwidth in GB/s (1e9 bytes/s), best of `reps` timed passes after one
    untimed pass (which faults the pages in).

    threads: streams in parallel (default: every CPU); use the threads the benchmark runs with.
    array_mib: MiB per array (default: ``default_array_mib()``, STREAM-sized; tests pass less).
    Returns {method, threads, array_mib, copy_gb_s, triad_gb_s, gb_s (the larger), samples}."""
    import numpy as np

    threads = max(1, threads or os.cpu_count() or 1)
    array_mib = array_mib or default_array_mib()
    n = array_mib * MIB // 8
    a, b, c = np.zeros(n), np.full(n, 2.0), np.full(n, 1.0)
    bounds = [(n * i // threads, n * (i + 1) // threads) for i in range(threads)]

    def copy() -> float:
        work = [threading.Thread(target=_copy, args=(a[i:j], b[i:j])) for i, j in bounds]
        return 2 * a.nbytes / _timed(work) / 1e9

    def triad() -> float:
        work = [
            threading.Thread(target=_triad, args=(a[i:j], b[i:j], c[i:j], 3.0)) for i, j in bounds
        ]
        return 3 * a.nbytes / _timed(work) / 1e9

    samples: dict[str, list[float]] = {"copy": [], "triad": []}
    copy(), triad()  # untimed: first touch of every page
    for _ in range(reps):
        samples["copy"].append(copy())
        samples["triad"].append(triad())
    best = {k: round(max(v), 2) for k, v in samples.items()}
    return {
        "method": f"STREAM copy/triad, {threads} threads over 3 x {array_mib} MiB float64, "
        f"best of {reps}",
        "threads": threads,
        "array_mib": array_mib,
        "copy_gb_s": best["copy"],
        "triad_gb_s": best["triad"],
        "gb_s": max(best.values()),
        "samples": {k: [round(s, 2) for s in v] for k, v in samples.items()},
    }


def roofline_tok_s(gb_s: float | None, bytes_per_token: int | None) -> float | None:
    """The decode speed memory bandwidth allows: bandwidth / weight bytes read per token."""
    if not gb_s or not bytes_per_token:
        return None
    return gb_s * 1e9 / bytes_per_token
