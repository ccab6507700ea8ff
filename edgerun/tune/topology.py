"""Which CPUs this machine has and how they differ: core clusters (big.LITTLE: different maximum
frequency or Arm cpu_capacity) and SMT siblings, read from Linux sysfs under `root`.

The tune search uses it to choose which cores to try pinning to: on a big.LITTLE board the big
cluster alone is often much faster than all cores (the little ones hold the big ones back at
every barrier), and on an SMT machine one thread per physical core is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_CPU_DIR = "sys/devices/system/cpu"


@dataclass(frozen=True)
class Topology:
    """CPUs that can run us, grouped: clusters (fastest first, each a sorted list of CPU ids with
    the same capacity) and one CPU per physical core (the first SMT sibling of each)."""

    cpus: list[int]
    clusters: list[list[int]] = field(default_factory=list)
    one_per_core: list[int] = field(default_factory=list)

    @property
    def heterogeneous(self) -> bool:
        """More than one kind of core (big.LITTLE)."""
        return len(self.clusters) > 1

    @property
    def smt(self) -> bool:
        """Some physical core runs more than one of our CPUs."""
        return len(self.one_per_core) < len(self.cpus)

    def affinity_choices(self) -> dict[str, list[int]]:
        """Named CPU sets worth trying: all, the fastest cluster (big.LITTLE), one CPU per
        physical core (SMT). Empty when all CPUs are alike (pinning changes nothing to try)."""
        choices: dict[str, list[int]] = {}
        if self.heterogeneous:
            choices["all"] = self.cpus
            choices["big"] = self.clusters[0]
        if self.smt:
            choices["all"] = self.cpus
            choices["one-per-core"] = self.one_per_core
        return choices


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6] (the kernel's cpulist format); bad parts are skipped."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        if lo.strip().isdigit() and (not hi or hi.strip().isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(out))


def _capacity(root: Path, cpu: int) -> int:
    """Arm cpu_capacity, else the maximum frequency, else 0 (all alike)."""
    base = root / _CPU_DIR / f"cpu{cpu}"
    for path in (base / "cpu_capacity", base / "cpufreq" / "cpuinfo_max_freq"):
        value = _read_int(path)
        if value is not None:
            return value
    return 0


def read_topology(root: Path = Path("/"), cpus: list[int] | None = None) -> Topology:
    """The topology of the CPUs we may run on (default: this process's affinity, or every CPU
    under `root` when `root` is a fake tree)."""
    if cpus is None:
        cpus = _allowed(root)
    by_capacity: dict[int, list[int]] = {}
    for cpu in cpus:
        by_capacity.setdefault(_capacity(root, cpu), []).append(cpu)
    clusters = [sorted(by_capacity[c]) for c in sorted(by_capacity, reverse=True)]
    seen: set[int] = set()
    firsts: list[int] = []
    for cpu in cpus:
        siblings_file = root / _CPU_DIR / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            siblings = parse_cpu_list(siblings_file.read_text()) or [cpu]
        except OSError:
            siblings = [cpu]
        if not seen.intersection(siblings):
            firsts.append(cpu)
        seen.update(siblings)
    return Topology(cpus=list(cpus), clusters=clusters, one_per_core=firsts)


def _allowed(root: Path) -> list[int]:
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    try:
        return parse_cpu_list((root / _CPU_DIR / "online").read_text())
    except OSError:
        return list(range(os.cpu_count() or 1))
