"""The memory this process may use when a cgroup limits it (a container's `--memory`, systemd's
MemoryMax, a CI runner): psutil reports the host's RAM, and a plan made against that is killed
by the group's OOM killer instead of refused up front.

Read from /proc/self/cgroup and the cgroup file system (v2 ``memory.max``, v1
``memory.limit_in_bytes``), the tightest limit of the process's group and its ancestors. Kernel
files, read bounded; anything unreadable or unlimited reads as no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_READ_LIMIT = 64 * 1024
# v1 reports "no limit" as the largest page-aligned long; anything near it is no limit
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryLimit:
    """A cgroup's memory limit and what it holds now (bytes). `cache`: page cache charged to
    the group, which the kernel reclaims before it kills, so it is not in use for our purpose."""

    limit: int
    usage: int
    cache: int
    path: str

    @property
    def available(self) -> int:
        """What a new allocation can still get inside the limit."""
        return max(self.limit - max(self.usage - self.cache, 0), 0)


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return fh.read(_READ_LIMIT).decode("ascii", "replace")
    except OSError:
        return None


def _number(path: Path) -> int | None:
    text = _read(path)
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        value = int(text.split()[0])
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _stat(path: Path, keys: tuple[str, ...]) -> int:
    """The first of `keys` found in a memory.stat file (0 when none)."""
    fields: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            fields[parts[0]] = int(parts[1])
    return next((fields[k] for k in keys if k in fields), 0)


def _groups(proc: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of this process from /proc/self/cgroup."""
    return _groups_from(_read(proc / "self" / "cgroup") or "")


def _groups_from(text: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) from the text of a /proc/<pid>/cgroup file."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(root: Path, group: str) -> list[Path]:
    """The group's directory under `root` and each parent up to `root`, innermost first;
    nothing outside `root` (the path comes from a file, so '..' is refused)."""
    parts = [p for p in group.strip().split("/") if p]
    if any(p in (".", "..") for p in parts):
        return []
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def memory_limit(
    proc: Path = Path("/proc"), sys_fs: Path = Path("/sys/fs/cgroup")
) -> MemoryLimit | None:
    """The tightest memory limit on this process, or None when there is none (or no Linux)."""
    v2, v1 = _groups(proc)
    found: list[MemoryLimit] = []
    if v2 is not None:
        for d in _ancestors(sys_fs, v2):
            limit = _number(d / "memory.max")
            if limit is not None:
                usage = _number(d / "memory.current") or 0
                found.append(MemoryLimit(limit, usage, _stat(d / "memory.stat", ("file",)), str(d)))
    if v1 is not None:
        for d in _ancestors(sys_fs / "memory", v1):
            limit = _number(d / "memory.limit_in_bytes")
            if limit is not None:
                usage = _number(d / "memory.usage_in_bytes") or 0
                cache = _stat(d / "memory.stat", ("total_cache", "cache"))
                found.append(MemoryLimit(limit, usage, cache, str(d)))
    return min(found, key=lambda m: m.available) if found else None


def ram_bytes() -> int:
    """The machine's RAM as this process can use it: the host's total, capped by a cgroup."""
    import psutil

    total = int(psutil.virtual_memory().total)
    limit = memory_limit()
    return min(total, limit.limit) if limit else total


def available_bytes() -> int:
    """The RAM a new allocation can get now: MemAvailable, capped by what a cgroup has left."""
    import psutil

    available = int(psutil.virtual_memory().available)
    limit = memory_limit()
    return min(available, limit.available) if limit else available
