"""Was the machine busy while we measured? Load average, CPU steal, and the CPU time that other
processes used during a stretch of measurement.

A benchmark on a shared machine (another process, a noisy VM neighbour) reports numbers that are
not the device's: on a 2-core machine one busy neighbour turned 25 tok/s into 1.6. The bench
warns with this signal; `edgerun tune` discards trials it marks disturbed.

    window = BusyWindow(pids=lambda: [worker.pid]).start()
    ... measure ...
    report = window.stop()          # {"busy": bool, "reasons": [...], "others_cores": 0.8, ...}

Everything is read from /proc (under `root`, so tests point it at a fake tree): ``/proc/stat``
for the whole machine's CPU jiffies and steal, ``/proc/loadavg``, and ``/proc/PID/stat`` for the
CPU time of our own processes, which is subtracted. Where /proc is missing (macOS, Windows) the
report says so and is never "busy".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Other processes' CPU time over the window, in cores (CPU seconds per second), above which the
# window is busy; and the share of the machine's time stolen by the hypervisor.
OTHERS_CORES_LIMIT = 0.25
STEAL_LIMIT = 0.05
# The one-minute load average minus the cores we occupy ourselves, above which we warn.
LOAD_MARGIN = 1.0
_USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy and steal jiffies (all CPUs), our processes' jiffies, and the time."""

    busy: int
    steal: int
    total: int
    ours: int
    at: float


def read_proc_stat(root: Path = Path("/")) -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies summed over every CPU from /proc/stat, or None.

    busy: user + nice + system + irq + softirq (guest time is already inside user)."""
    try:
        first = (root / "proc/stat").read_text().splitlines()[0].split()
        values = [int(v) for v in first[1:]]
    except (OSError, IndexError, ValueError):
        return None
    if first[0] != "cpu" or len(values) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq, steal, sum(values[:8])


def pid_jiffies(pid: int, root: Path = Path("/")) -> int:
    """utime + stime of process `pid` (all its threads), 0 when it is gone."""
    try:
        text = (root / f"proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def load_average(root: Path = Path("/")) -> float | None:
    """The one-minute load average (/proc/loadavg), or None."""
    try:
        return float((root / "proc/loadavg").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def cpu_count(root: Path = Path("/")) -> int:
    """CPUs listed in /proc/stat (cpu0, cpu1, ...), else os.cpu_count()."""
    try:
        lines = (root / "proc/stat").read_text().splitlines()
    except OSError:
        return os.cpu_count() or 1
    count = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return count or os.cpu_count() or 1


class BusyWindow:
    """Measure how busy the machine was between start() and stop().

    pids: returns the process ids whose CPU time is ours (default: this process); root: the
    file-system root /proc is read under; clock: a monotonic clock (tests pass a fake one)."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]] | None = None,
        root: Path = Path("/"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pids = pids or (lambda: [os.getpid()])
        self.root = root
        self.clock = clock
        self._start: CpuSnapshot | None = None
        self._load_start: float | None = None

    def _snapshot(self) -> CpuSnapshot | None:
        stat = read_proc_stat(self.root)
        if stat is None:
            return None
        ours = sum(pid_jiffies(pid, self.root) for pid in self.pids())
        return CpuSnapshot(*stat, ours=ours, at=self.clock())

    def start(self) -> BusyWindow:
        """Take the first snapshot; returns self."""
        self._start = self._snapshot()
        self._load_start = load_average(self.root)
        return self

    def stop(self, own_cores: float = 1.0) -> dict[str, Any]:
        """The report for the window since start(): others_cores (other processes' CPU seconds
        per second), steal_share, load_1m at both ends, cpus, busy and its reasons. `own_cores`:
        how many cores our own measurement keeps busy (threads), taken off the load average."""
        end = self._snapshot()
        report: dict[str, Any] = {
            "cpus": cpu_count(self.root),
            "load_1m": [self._load_start, load_average(self.root)],
        }
        if self._start is None or end is None or end.at <= self._start.at:
            return {**report, "busy": False, "disturbed": False, "reasons": []}
        seconds = end.at - self._start.at
        total = max(end.total - self._start.total, 1)
        others = (end.busy - self._start.busy) - max(end.ours - self._start.ours, 0)
        report["seconds"] = seconds
        report["others_cores"] = max(others, 0) / _USER_HZ / seconds
        report["steal_share"] = (end.steal - self._start.steal) / total
        report["reasons"] = _reasons(report, own_cores)
        report["busy"] = bool(report["reasons"])
        # measured over this very window (the load average trails by a minute): what tune uses
        report["disturbed"] = bool(
            report["others_cores"] > OTHERS_CORES_LIMIT or report["steal_share"] > STEAL_LIMIT
        )
        return report


def _reasons(report: dict[str, Any], own_cores: float) -> list[str]:
    """Why the window counts as busy (empty: it does not)."""
    reasons = []
    if report["others_cores"] > OTHERS_CORES_LIMIT:
        reasons.append(f"other processes used {report['others_cores']:.2f} cores")
    if report["steal_share"] > STEAL_LIMIT:
        reasons.append(f"the hypervisor stole {report['steal_share']:.0%} of CPU time")
    loads = [v for v in report["load_1m"] if v is not None]
    if loads and max(loads) - own_cores > LOAD_MARGIN:
        reasons.append(f"load average {max(loads):.2f} on {report['cpus']} CPUs")
    return reasons


def busy_warning(report: dict[str, Any] | None, what: str = "this run") -> str | None:
    """One warning line when `report` says the machine was busy, else None."""
    if not report or not report.get("busy"):
        return None
    return (
        f"the machine was busy during {what} ({'; '.join(report['reasons'])}):"
        " its numbers are not the device's own; rerun when it is idle"
    )
