"""Pinning the runtime's threads to a set of CPUs (a tuned profile's ``affinity``).

The calling thread is pinned before the backend starts its thread pool, and every thread it
starts afterwards (ONNX Runtime's intra-op pool, llama.cpp's OpenMP workers) inherits the mask.
Linux only (sched_setaffinity); elsewhere the profile's affinity is reported as not applied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def pin_cpus(cpus: Sequence[int]) -> str | None:
    """Pin this thread and those it starts to `cpus`; a warning line when that cannot be done
    (an OS without sched_setaffinity, CPUs this process may not use), else None."""
    if not cpus:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return f"cannot pin threads to CPUs {list(cpus)} on this OS; running unpinned"
    try:
        os.sched_setaffinity(0, set(cpus))
    except (OSError, ValueError) as exc:
        allowed = sorted(os.sched_getaffinity(0))
        return (
            f"cannot pin threads to CPUs {list(cpus)} ({exc}); allowed: {allowed}; running unpinned"
        )
    return None
