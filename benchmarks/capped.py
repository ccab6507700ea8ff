"""``python -m benchmarks.capped --limit 8G -- edgerun export ...``: does a command finish on a
machine with that much memory? (issue 20's "8B in <= 8 GB").

Peak RSS over-states what a streamed export needs: it counts the clean, file-backed pages of the
memory-mapped checkpoint, which the kernel drops and re-reads when memory is short. The honest
test is to run the command under a hard memory limit and see whether it finishes. The child runs
in a fresh memory cgroup (cgroup v2 ``memory.max`` where the unified hierarchy has the memory
controller, else cgroup v1 ``memory.limit_in_bytes``; root needed) with swap off for the group,
so anonymous memory past the limit is an OOM kill, while page cache is reclaimed. Recorded in
``results/capped-<time>.json``: exit code, wall time, OOM kills, the group's peak charge (page
cache included), the child's peak RSS, and the manifest's stages when ``--artifact`` names the
directory the command writes.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from benchmarks import RESULTS, machine, work_dir
from benchmarks.proc import run_measured

V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'8G' / '7500M' / a byte count -> bytes (binary units)."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if text and text[-1] in UNITS:
            return int(float(text[:-1]) * UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size: use e.g. 8G or 7500M") from None


class Group:
    """A memory cgroup limited to `limit` bytes, v2 or v1, removed on exit."""

    def __init__(self, name: str, limit: int) -> None:
        controllers = V2 / "cgroup.controllers"
        self.v2 = controllers.is_file() and "memory" in controllers.read_text().split()
        self.path = (V2 if self.v2 else V1) / name
        self.limit = limit

    def create(self) -> None:
        if not self.v2 and not V1.is_dir():
            raise SystemExit("error: no memory cgroup here (need cgroup v2 or v1 memory, as root)")
        self.path.mkdir(exist_ok=True)
        if self.v2:
            self._write("memory.max", self.limit)
            self._write("memory.swap.max", 0)
        else:
            self._write("memory.limit_in_bytes", self.limit)
            swap = self.path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                self._write(swap.name, self.limit)

    def _write(self, name: str, value: int) -> None:
        (self.path / name).write_text(str(value))

    def enter(self) -> None:
        """Called in the child before exec: move this process into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict[str, Any]:
        """OOM kills and the group's peak charge (bytes; page cache included)."""
        if self.v2:
            events = dict(
                line.split() for line in (self.path / "memory.events").read_text().splitlines()
            )
            peak_file = self.path / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else None
            return {"oom_kills": int(events.get("oom_kill", 0)), "group_peak_bytes": peak}
        control = dict(
            line.split() for line in (self.path / "memory.oom_control").read_text().splitlines()
        )
        return {
            "oom_kills": int(control.get("oom_kill", 0)),
            "group_peak_bytes": int((self.path / "memory.max_usage_in_bytes").read_text()),
            "failcnt": int((self.path / "memory.failcnt").read_text()),
        }

    def remove(self) -> None:
        with suppress(OSError):
            self.path.rmdir()


def evict(paths: list[Path]) -> int:
    """Drop the clean page-cache pages of `paths` (files, or every file under a directory), so
    that the group is charged for reading them: pages already cached stay charged to whichever
    group first read them, and a run would then look cheaper than it is on a cold machine.
    Returns the bytes of the files advised."""
    files = [
        f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()
    ]
    total = 0
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        total += file.stat().st_size
    return total


@contextmanager
def memory_group(name: str, limit: int) -> Iterator[Group]:
    """A fresh memory cgroup for the duration of the block."""
    group = Group(name, limit)
    group.create()
    try:
        yield group
    finally:
        group.remove()


def manifest_stages(artifact: Path | None) -> dict[str, Any] | None:
    """The export record (stages, peak) of the manifest the command wrote, if any."""
    if artifact is None or not (artifact / "edgerun.json").is_file():
        return None
    manifest = json.loads((artifact / "edgerun.json").read_text())
    export = manifest.get("export") or {}
    return {
        "peak_rss_bytes": export.get("peak_rss_bytes"),
        "stages": export.get("stages"),
        "validation": manifest.get("validation"),
    }


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--limit", required=True, help="The memory limit, e.g. 8G.")
@click.option("--name", default="capped", show_default=True, help="Names the result and the log.")
@click.option(
    "--artifact", type=click.Path(path_type=Path), help="Where the command writes its manifest."
)
@click.option(
    "--evict",
    "evict_paths",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="Drop these files' (or directories') cached pages first, so the group pays for them.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(
    limit: str, name: str, artifact: Path | None, evict_paths: tuple[Path, ...],
    command: tuple[str, ...],
) -> None:  # fmt: skip
    """Run COMMAND in a memory cgroup of --limit and record whether it finished."""
    cap = parse_size(limit)
    evicted = evict(list(evict_paths))
    log = work_dir() / "capped" / f"{name}.log"
    with memory_group(f"edgerun-capped-{os.getpid()}", cap) as group:
        result = run_measured(list(command), log, preexec=group.enter)
        stats = group.stats()
    record = {
        "what": "a command under a hard memory limit (benchmarks.capped)",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "limit_bytes": cap,
        "command": shlex.join(command),
        "evicted": {"paths": [str(p) for p in evict_paths], "bytes": evicted},
        "rc": result.rc,
        "finished": result.rc == 0 and stats["oom_kills"] == 0,
        "wall_s": round(result.wall_s, 1),
        "child_peak_rss_bytes": result.peak_rss_bytes,
        **stats,
        "export": manifest_stages(artifact),
        "log": str(log),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"capped-{name}-{stamp}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    gib = 1 << 30
    print(
        f"{name}: rc {result.rc}, {result.wall_s:.0f} s, oom kills {stats['oom_kills']}, "
        f"group peak {(stats['group_peak_bytes'] or 0) / gib:.2f} GiB, "
        f"child peak RSS {result.peak_rss_bytes / gib:.2f} GiB under a {cap / gib:.2f} GiB limit -> {out}"
    )
    sys.exit(0 if record["finished"] else 1)


if __name__ == "__main__":
    main()
