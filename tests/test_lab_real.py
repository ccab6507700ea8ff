"""Lab mode end to end on a real local cluster: the real backend (edgerun.load) on a real tiny
exported artifact on three posing devices, and Ctrl-C on a running `edgerun lab bench`."""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from edgerun.bench.device import fingerprint  # noqa: E402
from edgerun.bench.results import read_results, rows  # noqa: E402
from edgerun.bench.workload import Workload  # noqa: E402
from edgerun.cli import cli  # noqa: E402
from edgerun.lab.cluster import list_devices, select_devices  # noqa: E402
from edgerun.lab.orchestrate import Lab, LabRun  # noqa: E402
from edgerun.lab.results import ResultsFile  # noqa: E402
from edgerun.lab.ship import local_artifact  # noqa: E402
from tests.lab_cluster import LOADER, MACHINES, ROOT, LocalLab, artifact, running_lab  # noqa: E402

pytestmark = pytest.mark.timeout(120)
POSING = {"pi5": "raspberry-pi-5", "orin": "jetson-orin-nano", "x86": "x86-avx2-i7-8700"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalLab, Any]]:
    """A scheduler and three devices posing as a Pi 5, a Jetson Orin Nano and an x86 desktop."""
    root = tmp_path_factory.mktemp("lab-real")
    with running_lab(root, {name: MACHINES / m for name, m in POSING.items()}) as lab:
        yield lab


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama exported to onnx-fp32 (no validation, no speed probe)."""
    pytest.importorskip("torch")
    from edgerun.exporters.pipeline import export
    from tests.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-onnx")
    with pytest.MonkeyPatch.context() as mp:  # module scope: before the autouse EDGERUN_HOME
        mp.setenv("EDGERUN_HOME", str(root / "home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        src = build_tiny_model("llama", root / "src")
        # validation is the exporter tests' business; here it would double the setup time
        [result] = export(
            str(src), "onnx-fp32", root / "out", progress=False, probe=False, no_validate=True
        )
    assert result.written and result.path is not None, result.reason
    return Path(result.path)


def test_real_backend_on_three_posing_devices(
    lab: tuple[LocalLab, Any], tiny_onnx: Path, tmp_path: Path
) -> None:
    cluster, _ = lab
    out = tmp_path / "real.json"
    args = ["lab", "bench", cluster.address, str(tiny_onnx), "--devices", "pi5,orin,x86"]
    args += ["--reps", "2", "--warmup", "1", "--prompt-tokens", "16", "--gen-tokens", "16"]
    args += ["--threads", "1", "--idle-seconds", "0", "--power", "none", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = read_results(out)
    host_cpu = fingerprint().get("cpu_model")
    for run in data["runs"]:
        name = run["lab"]["device"]
        assert run["device"]["name"] == f"{name} (posing)"
        assert run["lab"]["status"] == "ok", run["lab"]
        # posing is recorded: the posed machine, and the CPU the numbers were measured on
        posing = run["device"]["posing"]
        assert posing["machine"] == str(MACHINES / POSING[name])
        assert posing["measured_on"]["cpu_model"] == host_cpu
        assert run["device"]["cpu_model"].startswith("posing as ")
        [art] = run["artifacts"]
        assert (art["backend"], art["providers"]) == ("onnxruntime", ["CPUExecutionProvider"])
        assert art["device_path"] != art["path"] == str(tiny_onnx)  # ran the device's copy
        assert len(art["reps"]) == 2
        for rep in art["reps"]:
            assert rep["gen_tokens"] == 16
            assert rep["decode_tok_s"] > 0 and rep["ttft_s"] > 0
            assert rep["memory"]["peak_rss"] > 0
    table = rows(data)
    assert sorted(r["device"] for r in table) == ["orin (posing)", "pi5 (posing)", "x86 (posing)"]
    assert all(r["decode_tok_s"] > 0 and r["ttft_ms"] > 0 and r["peak_rss_mb"] > 0 for r in table)
    csv_path = tmp_path / "compare.csv"
    compared = CliRunner().invoke(cli, ["compare", str(out), "--csv", str(csv_path)])
    assert compared.exit_code == 0, compared.output
    with csv_path.open(newline="") as fh:
        by_device = {r["device"]: r for r in csv.DictReader(fh)}
    assert sorted(by_device) == ["orin (posing)", "pi5 (posing)", "x86 (posing)"]
    assert all(float(r["decode_tok_s"]) > 0 for r in by_device.values())


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _executing(client: Any, address: str) -> int:
    """How many tasks the device's worker is running now (its one slot: 0 or 1)."""
    [count] = client.run(
        lambda dask_worker: dask_worker.state.executing_count, workers=[address]
    ).values()
    return int(count)


def _calls(log: Path) -> list[str]:
    """What the fake backend on the device did, in order (tests/bench_fake.py)."""
    return [json.loads(line)["what"] for line in log.read_text().splitlines()]


def _until(lines: queue.Queue[str], seen: list[str], wanted: list[str], timeout: float) -> None:
    """Read progress lines until each of `wanted` has appeared (AssertionError at timeout)."""
    deadline = time.monotonic() + timeout
    while not all(any(line.startswith(w) for line in seen) for w in wanted):
        try:
            seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            raise AssertionError(f"no {wanted} in time: {seen[-20:]}") from None


def test_ctrl_c_stops_every_device_and_keeps_what_ended(
    lab: tuple[LocalLab, Any], tmp_path: Path
) -> None:
    cluster, client = lab
    fake_log = tmp_path / "slow-calls.jsonl"
    cluster.add_worker(
        "slow",
        MACHINES / "raspberry-pi-4",
        EDGERUN_FAKE_DECODE_S="0.1",  # a repetition of 10 tokens takes ~0.9 s there
        EDGERUN_FAKE_LOG=str(fake_log),
    )
    cluster.wait_for(client, {"slow"})
    art = artifact(tmp_path / "c", "fake-c", b"C")
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "edgerun", "lab", "bench", cluster.address, str(art)]
    cmd += ["--devices", "x86,slow", "--reps", "20", "--warmup", "0", "--prompt-tokens", "8"]
    cmd += ["--gen-tokens", "10", "--idle-seconds", "0", "--power", "none", "--loader", LOADER]
    cmd += ["--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGERUN_HOME": str(tmp_path / "host")}
    # Ctrl-C as a terminal delivers it: a child inherits an ignored SIGINT, and something earlier
    # in the whole suite leaves it ignored in this process (reproduced: the host then ignores
    # Ctrl-C, finishes and exits 0), so the host starts with the default action.
    proc = subprocess.Popen(
        cmd, env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _until(lines, seen, ["x86: done: ok", "slow: rep 2/20"], timeout=60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    _until(lines, seen, ["Interrupted"], timeout=5)
    assert f"Interrupted: every device cancelled; 2 device runs kept in {out}." in seen

    by_device = {r["lab"]["device"]: r for r in read_results(out)["runs"]}
    assert by_device["x86"]["lab"]["status"] == "ok"  # it ended before Ctrl-C: kept, all of it
    assert len(by_device["x86"]["artifacts"][0]["reps"]) == 20
    cancelled = by_device["slow"]["lab"]
    assert (cancelled["status"], cancelled["reason"]) == (
        "cancelled",
        "cancelled on the lab host (Ctrl-C)",
    )

    # the device's work stops: its task thread ends at the next step, its model is closed
    [slow] = select_devices(list_devices(client), "slow", "test")
    deadline = time.monotonic() + 10
    while _executing(client, slow["address"]) or _calls(fake_log)[-1] != "close":
        assert time.monotonic() < deadline, f"still running: {_calls(fake_log)[-3:]}"
        time.sleep(0.1)
    calls = _calls(fake_log)
    assert 2 <= calls.count("generate 8") < 20
    time.sleep(1.0)  # longer than one repetition there
    assert _calls(fake_log) == calls  # nothing generates after

    # no slot stays busy: the next bench on the same device runs to the end
    workload = Workload([8], 2, 1, 0).to_json()
    options = {"workload": workload, "power": "none", "assume_watts": None}
    options |= {"idle_seconds": 0.0, "loader": LOADER}
    [run] = Lab(client, LabRun([local_artifact(art)], options, stall_s=20)).run(
        [slow], ResultsFile(None)
    )
    assert run["lab"]["status"] == "ok" and len(run["artifacts"][0]["reps"]) == 1
    cluster.kill("slow")


@pytest.mark.timeout(300)  # the validated export comes first
def test_lab_bench_scores_fidelity_on_every_device(
    lab: tuple[LocalLab, Any], tmp_path: Path, short_eval_text: Path
) -> None:
    """`lab bench --fidelity`: each device scores the artifact against the reference it ships,
    the numbers land in the results beside the export's, and the table shows them."""
    from edgerun.exporters.pipeline import export
    from edgerun.exporters.validate import Thresholds
    from tests.tiny_models import build_tiny_model

    src = build_tiny_model("llama", tmp_path / "src")
    gate = Thresholds(max_ppl_ratio=1.1, max_mean_kl=0.1, min_top1_agreement=0.3)
    [made] = export(
        str(src), "onnx-int4", tmp_path / "out", eval_text=short_eval_text, thresholds=gate,
        progress=False, probe=False,
    )  # fmt: skip
    assert made.written and made.path is not None, made.reason
    cluster, _ = lab
    out = tmp_path / "fidelity.json"
    args = ["lab", "bench", cluster.address, str(made.path), "--devices", "pi5,x86", "--fidelity"]
    args += ["--reps", "1", "--warmup", "0", "--prompt-tokens", "8", "--gen-tokens", "4"]
    args += ["--idle-seconds", "0", "--power", "none", "--json", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "fidelity KL (export)" in result.output
    export_kl = json.loads((made.path / "edgerun.json").read_text())["fidelity"]["export"][
        "mean_kl"
    ]
    for run in read_results(out)["runs"]:
        [art] = run["artifacts"]
        found = art["fidelity"]
        assert found["passed"] is True and found["reasons"] == [], found
        assert found["export"]["mean_kl"] == export_kl
        assert found["device"]["mean_kl"] == pytest.approx(export_kl, rel=0.05)
