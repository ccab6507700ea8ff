"""Run a command as a child process and measure it: wall time and peak RSS (via wait4)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class ProcResult:
    """A finished command: exit code, wall seconds, peak RSS of it and its waited-for children."""

    cmd: list[str]
    rc: int
    wall_s: float
    peak_rss_bytes: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ProcResult:
    """Run `cmd` with stdout and stderr into `log`; wait4 gives the child's peak RSS, which
    covers its own descendants once they have been waited for (ru_maxrss is the max of them)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # already reaped by wait4; keep Popen from waiting again
    return ProcResult(cmd, rc, wall, usage.ru_maxrss * 1024, str(log))


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
