"""Memory of the current process: sampled peak RSS checked against the kernel's high-water marks
(VmHWM, ru_maxrss), USS / PSS, and file-backed versus anonymous pages (mmap'ed weights count as
file-backed: the kernel can drop and re-read them, so they hide model weights from "used" RAM)."""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from edgerun.device.memory import smaps_rollup


def vm_hwm_bytes(path: Path = Path("/proc/self/status")) -> int | None:
    """VmHWM, the peak RSS of this process image (Linux; reset by execve, unlike ru_maxrss)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def ru_maxrss_bytes() -> int:
    """The kernel's high-water mark of this process's RSS (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakRss:
    """A thread that samples this process's RSS with psutil and keeps the maximum."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgerun-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict[str, Any]:
        """Current and peak memory of this process, bytes; None where the OS does not say."""
        rss = self.process.memory_info().rss
        self.peak = max(self.peak, rss)
        maxrss = ru_maxrss_bytes()
        hwm = vm_hwm_bytes()
        # The kernel's exact high-water mark: VmHWM on Linux. ru_maxrss is kept as a cross-check
        # but Linux carries it across execve, so a worker spawned by a big parent (pytest with
        # torch loaded) starts with the parent's peak; then it says nothing about the model.
        kernel_peak = hwm if hwm is not None else maxrss
        snap: dict[str, Any] = {
            "rss": rss,
            "peak_rss": max(self.peak, kernel_peak),
            "peak_rss_sampled": self.peak,
            "vm_hwm": hwm,
            "ru_maxrss": maxrss,
            "ru_maxrss_inherited": hwm is not None and maxrss > 1.1 * max(hwm, self.peak),
            "uss": None,
            "pss": None,
        }
        try:
            full = self.process.memory_full_info()
            snap["uss"] = getattr(full, "uss", None)
            snap["pss"] = getattr(full, "pss", None)
        except (psutil.AccessDenied, psutil.Error):
            pass
        rollup = smaps_rollup()
        snap["anonymous"] = rollup["anonymous"] if rollup else None
        snap["file_backed"] = rollup["file"] if rollup else None
        return snap
