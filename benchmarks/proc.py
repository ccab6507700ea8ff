"""Run a command as a child process and measure it: wall time and peak RSS.

Peak RSS is read two ways. ``peak_rss_bytes``: the child's (and its descendants') VmHWM, the
high-water mark of each process image, polled from /proc every 0.1 s, largest process wins; a
peak reached in the last 0.1 s before exit can be missed. ``wait4_maxrss_bytes``: the kernel's
ru_maxrss from wait4, which never misses a peak but carries over the RSS of the parent at spawn
(fork/exec keep the high-water mark), so it is an upper bound.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgerun.bench.memory import vm_hwm_bytes


@dataclass
class ProcResult:
    """A finished command: exit code, wall seconds, peak RSS (see the module docstring)."""

    cmd: list[str]
    rc: int
    wall_s: float
    peak_rss_bytes: int
    wait4_maxrss_bytes: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def vm_hwm(pid: int) -> int:
    """VmHWM of a live process in bytes (0 when it is gone or /proc is not there)."""
    return vm_hwm_bytes(Path(f"/proc/{pid}/status")) or 0


class _Poller(threading.Thread):
    """Polls the VmHWM of a process tree until stopped; keeps the largest value seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                pids = [self.pid, *(c.pid for c in psutil.Process(self.pid).children(True))]
            except psutil.Error:
                pids = [self.pid]
            self.peak = max([self.peak, *(vm_hwm(p) for p in pids)])
            self.stop.wait(0.1)


def run_measured(
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    preexec: Callable[[], None] | None = None,
) -> ProcResult:
    """Run `cmd` with stdout and stderr into `log`; measure wall time and peak RSS. `preexec`
    runs in the child before exec (benchmarks.capped puts the child in a memory cgroup)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=preexec
        )
        poller = _Poller(proc.pid)
        poller.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            poller.stop.set()
            poller.join()
        wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # already reaped by wait4; keep Popen from waiting again
    return ProcResult(cmd, rc, wall, poller.peak, usage.ru_maxrss * 1024, str(log))


def failure_line(log: Path) -> str:
    """The most telling line of a failed command's log: an 'error:' line, else the last one."""
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [ln for ln in lines if ln]
    for line in reversed(lines):
        if line.lower().startswith("error") or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
