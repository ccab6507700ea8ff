"""The busy-machine signal: other processes' CPU time, steal and load average during a run,
read from /proc (a fake tree here, then the real one with a real CPU hog beside a bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.bench.busy import BusyWindow, busy_warning
from edgerun.cli import cli
from tests.bench_fake import make_artifact

ROOT = Path(__file__).resolve().parent.parent


def _proc(root: Path, busy: float, steal: float, idle: float, ours: float, load: float) -> None:
    """A fake /proc: 2 CPUs; `busy` user jiffies machine-wide, `ours` of them this process's."""
    (root / "proc/4242").mkdir(parents=True, exist_ok=True)
    total = f"cpu  {busy:.0f} 0 0 {idle:.0f} 0 0 0 {steal:.0f} 0 0\n"
    (root / "proc/stat").write_text(total + "cpu0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0\n")
    (root / "proc/loadavg").write_text(f"{load} 0.5 0.5 1/100 4242\n")
    fields = ["S"] + ["0"] * 10 + [f"{ours:.0f}", "0"] + ["0"] * 30
    (root / "proc/4242/stat").write_text(f"4242 (python worker) {' '.join(fields)}\n")


def _window(root: Path, before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """The report of a BusyWindow over fake /proc states `before` and `after` (_proc's keywords)."""
    now = [100.0]
    window = BusyWindow(lambda: [4242], root=root, clock=lambda: now[0])
    _proc(root, **before)
    window.start()
    _proc(root, **after)
    now[0] += seconds
    return window.stop(own_cores=1)


def test_other_processes_cpu_time_steal_and_load_make_a_window_busy(tmp_path: Path) -> None:
    # 2 s: 300 busy jiffies (3 CPU-seconds), 100 of them ours; 10% of the time stolen
    report = _window(
        tmp_path,
        {"busy": 1000, "steal": 0, "idle": 5000, "ours": 200, "load": 0.4},
        {"busy": 1300, "steal": 40, "idle": 5060, "ours": 300, "load": 3.5},
        2.0,
    )
    assert report["others_cores"] == pytest.approx(1.0)  # 200 jiffies / 100 Hz / 2 s
    assert report["steal_share"] == pytest.approx(40 / 400)
    assert report["busy"] and report["disturbed"] and report["cpus"] == 2
    assert report["reasons"] == [
        "other processes used 1.00 cores",
        "the hypervisor stole 10% of CPU time",
        "load average 3.50 on 2 CPUs",
    ]
    assert "rerun when it is idle" in (busy_warning(report) or "")


def test_a_quiet_window_is_not_busy_and_no_proc_is_not_measured(tmp_path: Path) -> None:
    report = _window(
        tmp_path,
        {"busy": 1000, "steal": 0, "idle": 5000, "ours": 200, "load": 0.2},
        {"busy": 1105, "steal": 0, "idle": 5100, "ours": 300, "load": 0.9},
        1.0,
    )
    assert not report["busy"] and report["others_cores"] == pytest.approx(0.05)
    assert busy_warning(report) is None
    empty = BusyWindow(root=tmp_path / "nothing").start().stop()
    assert empty["busy"] is False and empty["reasons"] == []


def test_bench_warns_when_another_process_keeps_a_cpu_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    artifact = make_artifact(tmp_path / "a", "fake-a", decode_s=0.02)
    out = tmp_path / "r.json"
    # the hog ends by itself after 120 s, and is the process killed below (a `timeout` wrapper
    # would be killed instead, leaving its child spinning)
    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 120\nwhile time.time() < end: pass",
        ],
    )
    try:
        result = CliRunner().invoke(
            cli,
            ["bench", str(artifact), "--reps", "2", "--warmup", "0", "--gen-tokens", "40",
             "--prompt-tokens", "8", "--power", "none", "--idle-seconds", "0",
             "--loader", "tests.bench_fake:load", "--json", str(out)],
        )  # fmt: skip
    finally:
        hog.kill()
        hog.wait()
    assert result.exit_code == 0, result.output
    run = json.loads(out.read_text())["runs"][0]
    assert run["busy"]["busy"] and run["busy"]["others_cores"] > 0.5
    assert all(rep["busy"]["others_cores"] > 0.5 for rep in run["artifacts"][0]["reps"])
    assert "warning: the machine was busy during run" in result.output
    # compare and its report show the signal per row: both repetitions ran on a busy machine
    md, html = tmp_path / "c.md", tmp_path / "c.html"
    shown = CliRunner().invoke(cli, ["compare", str(out), "--md", str(md), "--html", str(html)])
    assert shown.exit_code == 0, shown.output
    header, _, row = md.read_text().splitlines()[:3]
    cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert cells["busy reps"] == "2"
    assert float(cells["others' cores"]) > 0.5 and float(cells["load 1m"]) >= 0
    assert "busy reps" in html.read_text()
