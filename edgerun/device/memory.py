"""This process's memory as the kernel counts it: resident, anonymous and file-backed pages
(mmap'ed weights are file-backed: the kernel can drop and re-read them). Read by the backends (what
a load added) and by the bench (edgerun.bench.memory)."""

from __future__ import annotations

from pathlib import Path

import psutil


def smaps_rollup(path: Path = Path("/proc/self/smaps_rollup")) -> dict[str, int] | None:
    """{rss, anonymous, file} in bytes from /proc/self/smaps_rollup (Linux 4.14+), else None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    if "Rss" not in fields or "Anonymous" not in fields:
        return None
    return {
        "rss": fields["Rss"],
        "anonymous": fields["Anonymous"],
        "file": fields["Rss"] - fields["Anonymous"],
    }


def anonymous_bytes() -> int:
    """This process's anonymous memory (the pages of mapped files are the kernel's to drop and
    re-read), or its RSS where /proc has no smaps_rollup."""
    rollup = smaps_rollup()
    return rollup["anonymous"] if rollup is not None else int(psutil.Process().memory_info().rss)
