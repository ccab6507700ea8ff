"""A cgroup's memory limit caps the RAM edgerun plans with (fake /proc and /sys/fs/cgroup trees;
the real cgroup is exercised by benchmarks/capped.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.device import cgroup
from edgerun.device.cgroup import MemoryLimit, memory_limit

GIB = 1 << 30


def _tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc, sys_fs = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(proc_cgroup)
    for name, text in files.items():
        path = sys_fs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, sys_fs


def test_v2_limit_of_the_tightest_ancestor_less_what_is_in_use(tmp_path: Path) -> None:
    proc, sys_fs = _tree(
        tmp_path,
        "0::/ci/job\n",
        {
            "ci/memory.max": str(8 * GIB),
            "ci/memory.current": str(1 * GIB),
            "ci/memory.stat": "anon 1\nfile 0\n",
            "ci/job/memory.max": "max\n",  # the job itself: unlimited, its parent is not
            "ci/job/memory.current": str(3 * GIB),
        },
    )
    found = memory_limit(proc, sys_fs)
    assert found is not None and found.limit == 8 * GIB and found.path.endswith("ci")
    assert found.available == 7 * GIB


def test_v1_page_cache_is_not_in_use(tmp_path: Path) -> None:
    proc, sys_fs = _tree(
        tmp_path,
        "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n",
        {
            "memory/docker/abc/memory.limit_in_bytes": str(4 * GIB),
            "memory/docker/abc/memory.usage_in_bytes": str(3 * GIB),
            "memory/docker/abc/memory.stat": f"cache {2 * GIB}\ntotal_cache {2 * GIB}\nrss 5\n",
            "memory/memory.limit_in_bytes": "9223372036854771712\n",  # the root: unlimited
        },
    )
    assert memory_limit(proc, sys_fs) == MemoryLimit(
        4 * GIB, 3 * GIB, 2 * GIB, str(sys_fs / "memory/docker/abc")
    )
    assert memory_limit(proc, sys_fs).available == 3 * GIB  # type: ignore[union-attr]


def test_no_limit_no_cgroup_and_no_escape(tmp_path: Path) -> None:
    proc, sys_fs = _tree(tmp_path, "0::/\n", {"memory.max": "max\n"})
    assert memory_limit(proc, sys_fs) is None
    assert memory_limit(tmp_path / "absent", sys_fs) is None
    # a path climbing out of the cgroup tree is not followed
    proc, sys_fs = _tree(tmp_path / "b", "0::/../../etc\n", {})
    (sys_fs.parent / "etc").mkdir()
    (sys_fs.parent / "etc" / "memory.max").write_text("1024")
    assert memory_limit(proc, sys_fs) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_proc_cgroup_text_parses_or_reads_as_none(text: str) -> None:
    v2, v1 = cgroup._groups_from(text)
    assert v2 is None or isinstance(v2, str)
    assert v1 is None or isinstance(v1, str)


def test_the_export_plan_and_the_budget_use_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgerun.backends.providers import memory_budget_bytes
    from edgerun.device.profile import get_profile
    from edgerun.exporters.memory import available_bytes

    monkeypatch.setattr(cgroup, "memory_limit", lambda: MemoryLimit(2 * GIB, GIB, 0, "/x"))
    assert available_bytes() == GIB
    assert cgroup.ram_bytes() == 2 * GIB
    profile = get_profile("generic-x86_64")  # memory_budget_mb "auto": a share of the RAM
    assert profile.memory_budget_mb is None
    assert memory_budget_bytes(profile) == int(2 * GIB * profile.memory_fraction)
