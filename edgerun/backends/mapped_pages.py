"""Give back the pages of a memory-mapped model file that the runtime copied elsewhere.

llama.cpp maps a GGUF file read-only and, on CPUs with its repacked kernels (x86 AVX2 and up, ARM
with i8mm / SVE), copies the tensors it can repack (q4_K, q4_0, iq4_nl...) into its own buffers
at load time. The copy is read from then on, but the file pages touched while copying stay in the
process's resident set until the kernel needs the memory: RSS then shows the file plus the copy.
Measured on a Llama-3.2-1B-shaped q4_k_m (0.75 GB): RSS 1.41 GB after load and a prompt, of
which 0.78 GB file-backed; after MADV_DONTNEED on the mapping and 16 more decode steps, 0.98 GB
(0.34 GB file-backed: the tensors still read from the file fault back in from the page cache).

Only read-only mappings are released (nothing written can be lost: a dropped page is re-read
from the file on its next use). Linux only; elsewhere, or on any failure, nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MADV_DONTNEED = 4


def mappings(path: Path, maps: Path = Path("/proc/self/maps")) -> list[tuple[int, int]]:
    """(start, end) of each read-only mapping of `path` in this process."""
    target = os.path.realpath(path)
    found = []
    try:
        lines = maps.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == target and "w" not in parts[1]:
            start, _, end = parts[0].partition("-")
            with contextlib.suppress(ValueError):
                found.append((int(start, 16), int(end, 16)))
    return found


def release(path: Path) -> int:
    """Drop this process's resident pages of the read-only mappings of `path` (they fault back
    in from the page cache where still used). Returns the bytes of address space advised."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, end in mappings(path):
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
    return done


def release_loaded(path: Path, llama_kwargs: Mapping[str, Any], copied: bool = True) -> int:
    """`release(path)` for a llama.cpp model just loaded with `llama_kwargs`; nothing when it was
    not memory-mapped (use_mmap off), is locked in RAM (use_mlock), has no weights (vocab_only)
    or copied none (`copied` false: loaded without extra buffers, every weight read from the
    file). Returns the bytes of address space advised."""
    if (
        not copied
        or llama_kwargs.get("vocab_only")
        or not llama_kwargs.get("use_mmap", True)
        or llama_kwargs.get("use_mlock")
    ):
        return 0
    return release(path)
