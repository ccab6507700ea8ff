"""Lab liveness on a real local cluster (issue 21): a busy device on a loaded host is not
taken for a lost one, and a lab whose scheduler dies mid-bench says so, one line per device,
and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from edgerun.bench.workload import Workload  # noqa: E402
from edgerun.lab.cluster import connect, list_devices, select_devices  # noqa: E402
from edgerun.lab.orchestrate import Lab, LabRun  # noqa: E402
from edgerun.lab.results import ResultsFile  # noqa: E402
from edgerun.lab.ship import local_artifact  # noqa: E402
from tests.lab_cluster import LOADER, MACHINES, ROOT, LocalLab, artifact  # noqa: E402

pytestmark = pytest.mark.timeout(120)
PI = MACHINES / "raspberry-pi-5"


def test_busy_device_is_not_taken_for_lost(tmp_path: Path) -> None:
    """Two devices on a loaded host, one busy (its model's load holds a CPU and its GIL for
    2 s), ~6 s of bench each, while the host's Dask client refreshes its scheduler-info cache
    every millisecond: that cache holds no workers between refreshes, and a host that read
    liveness from it saw ~6% of its polls without a live device ("disconnected mid-run")."""
    import dask

    cluster = LocalLab(tmp_path)
    try:
        cluster.add_worker("calm", PI, EDGERUN_FAKE_DECODE_S="0.1")
        cluster.add_worker("busy", PI, EDGERUN_FAKE_DECODE_S="0.1", EDGERUN_FAKE_BUSY_S="2")
        art = artifact(tmp_path / "a", "fake-a", b"A")
        options = {"workload": Workload([8], 20, 3, 0).to_json(), "power": "none"}
        options |= {"assume_watts": None, "idle_seconds": 0.0, "loader": LOADER}
        spec = LabRun([local_artifact(art)], options, stall_s=60, rejoin_s=0.5)
        fast_cache = {"distributed.client.scheduler-info-interval": "1ms"}
        with dask.config.set(fast_cache), connect(cluster.address) as client:
            cluster.wait_for(client, {"calm", "busy"})
            devices = select_devices(list_devices(client), "calm,busy", "test")
            runs = Lab(client, spec).run(devices, ResultsFile(None))
    finally:
        cluster.close()
    for run in runs:
        assert (run["lab"]["status"], run["lab"]["attempts"]) == ("ok", 1), run["lab"]
        assert len(run["artifacts"][0]["reps"]) == 3


def test_scheduler_lost_mid_bench_exits_nonzero_one_line_per_device(tmp_path: Path) -> None:
    cluster = LocalLab(tmp_path)
    try:
        for name in ("d1", "d2"):
            cluster.add_worker(name, PI, EDGERUN_FAKE_DECODE_S="0.1")
        with connect(cluster.address) as client:
            cluster.wait_for(client, {"d1", "d2"})
        art = artifact(tmp_path / "a", "fake-a", b"A")
        cmd = [sys.executable, "-m", "edgerun", "lab", "bench", cluster.address, str(art)]
        cmd += ["--reps", "50", "--warmup", "0", "--prompt-tokens", "8", "--gen-tokens", "10"]
        cmd += ["--idle-seconds", "0", "--power", "none", "--loader", LOADER]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGERUN_HOME": str(tmp_path / "host")}
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines: kill the scheduler once both measure
            if line.startswith("d2: rep 2") or line.startswith("d1: rep 2"):
                cluster.kill("scheduler")
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 2, rest
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.close()
    assert "Traceback" not in rest, rest
    lines = [line for line in rest.splitlines() if "done:" not in line and "rep " not in line]
    lines = [line for line in lines if line.startswith(("d1:", "d2:", "error:", "ERROR"))]
    lost = f"failed: lost the lab scheduler at {cluster.address} mid-run"
    assert sorted(lines[:2]) == [f"d1: {lost}", f"d2: {lost}"], rest
    assert lines[2].startswith(f"error: lost the lab scheduler at {cluster.address}"), rest
    assert len(lines) == 3, rest


def test_the_clients_own_lost_scheduler_record_is_left_to_the_lab() -> None:
    """Dask's "Failed to reconnect to scheduler" (after its 10 s timeout) is dropped: the lab
    reports the lost scheduler itself, one line per device; other Dask errors stay, shortened."""
    import logging

    from edgerun.lab.guard import _OneLineLogs

    keep = _OneLineLogs().filter
    lost = logging.LogRecord("distributed.client", logging.ERROR, __file__, 1,
                             "Failed to reconnect to scheduler after %.2f seconds, closing client",
                             (10.0,), None)  # fmt: skip
    other = logging.LogRecord(
        "distributed.client", logging.ERROR, __file__, 1, "boom %s", ("x",), None
    )
    assert keep(lost) is False and keep(other) is True
