"""Lab mode on a real local Dask cluster: a scheduler and worker processes on loopback, each
posing as a different device (tests/data/machines), benchmarking tiny fake-backend artifacts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from edgerun.bench.results import read_results, rows  # noqa: E402
from edgerun.bench.workload import Workload  # noqa: E402
from edgerun.cli import cli  # noqa: E402
from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.lab.cluster import connect, list_devices, select_devices  # noqa: E402
from edgerun.lab.local import free_port  # noqa: E402
from edgerun.lab.orchestrate import Lab, LabRun  # noqa: E402
from edgerun.lab.results import ResultsFile  # noqa: E402
from edgerun.lab.ship import local_artifact  # noqa: E402
from tests.lab_cluster import LOADER, MACHINES, LocalLab, artifact, running_lab, tiny_machine  # noqa: E402

pytestmark = pytest.mark.timeout(120)
DEVICES = {"pi5": "raspberry-pi-5", "orin": "jetson-orin", "x86": "generic-x86_64", "mcu": "generic-x86_64"}  # fmt: skip
runner = CliRunner()
FAST = ["--reps", "1", "--warmup", "0", "--prompt-tokens", "8", "--gen-tokens", "4"]
FAST += ["--idle-seconds", "0", "--power", "none", "--loader", LOADER]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalLab, Any]]:
    """Scheduler + four devices: a Pi 5, a Jetson Orin, an x86 desktop, and an x86 board with
    100 bytes of RAM (whose memory budget declines every artifact)."""
    root = tmp_path_factory.mktemp("lab")
    machines = {name: MACHINES / m for name, m in (("pi5", "raspberry-pi-5"), ("orin", "jetson-orin-nano"), ("x86", "x86-avx2-i7-8700"))}  # fmt: skip
    with running_lab(root, {**machines, "mcu": tiny_machine(root, ram_bytes=100)}) as lab:
        yield lab


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return [artifact(root / "a", "fake-a", b"A"), artifact(root / "b", "fake-b", b"B")]


def test_devices_listed_with_profiles(lab: tuple[LocalLab, Any]) -> None:
    cluster, client = lab
    found = {d["id"]: d for d in list_devices(client)}
    assert {k: found[k]["profile"] for k in DEVICES} == DEVICES
    assert found["pi5"]["cpu"] == "posing as ARM Cortex-A76" and found["pi5"]["arch"] == "aarch64"
    assert found["mcu"]["ram_bytes"] == 100
    result = runner.invoke(cli, ["lab", "devices", cluster.address, "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert sorted(d["id"] for d in listed["devices"]) == sorted(DEVICES)
    assert listed["warnings"] == []


def test_lab_devices_command_at_80_columns(
    lab: tuple[LocalLab, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgerun lab devices` as an 80-column terminal's pipe runs it (COLUMNS=80): every table
    line fits, each device's row shows its cells (versions included) whole."""
    from edgerun.lab.render import DEVICE_COLUMNS, DEVICE_LABELS, device_rows
    from tests.test_terminal_output import check_table

    cluster, client = lab
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(cli, ["lab", "devices", cluster.address])
    assert result.exit_code == 0, result.output
    table = device_rows(list_devices(client))
    lines = result.output.splitlines()
    shown = check_table(table, DEVICE_COLUMNS, DEVICE_LABELS, lines, 80)
    assert [k for k, _ in shown[:2]] == ["device", "edgerun"]


def test_bench_every_device_and_artifact_then_ships_nothing(
    lab: tuple[LocalLab, Any], artifacts: list[Path], tmp_path: Path
) -> None:
    cluster, _ = lab
    out = tmp_path / "r.json"
    args = ["lab", "bench", cluster.address, *map(str, artifacts), *FAST, "--json", str(out)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = read_results(out)  # the existing schema, checked field by field
    by_device = {run["lab"]["device"]: run for run in data["runs"]}
    assert set(by_device) == set(DEVICES)
    for dev in ("pi5", "orin", "x86"):
        run = by_device[dev]
        assert run["device"]["profile"]["id"] == DEVICES[dev]
        assert [a["name"] for a in run["artifacts"]] == ["fake-a", "fake-b"]
        assert all(a["summary"]["by_prompt"]["8"]["decode_tok_s"] for a in run["artifacts"])
        assert run["lab"]["shipped"] == {"fake-a": 200, "fake-b": 200}
        assert {a["profile_id"] for a in run["artifacts"]} == {DEVICES[dev]}
    for art in by_device["mcu"]["artifacts"]:
        assert art["lab"]["status"] == "declined"
        assert "exceed the memory budget" in art["lab"]["reason"]
    assert len(rows(data)) == 6  # 3 measuring devices x 2 artifacts x 1 prompt length

    again = tmp_path / "r2.json"
    result = runner.invoke(cli, [*args[:-1], str(again)])
    assert result.exit_code == 0, result.output
    shipped = [r["lab"]["shipped"] for r in read_results(again)["runs"] if r["lab"]["shipped"]]
    assert shipped == [{"fake-a": 0, "fake-b": 0}] * 3

    html = tmp_path / "report.html"
    result = runner.invoke(cli, ["compare", str(out), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert all(dev in html.read_text() for dev in ("pi5", "orin", "x86"))


def _lab_run(artifact_paths: list[Path], **kw: Any) -> LabRun:
    workload = Workload([8], kw.pop("gen_tokens", 4), kw.pop("reps", 1), 0)
    options = {
        "workload": workload.to_json(),
        "power": "none",
        "assume_watts": None,
        "idle_seconds": 0.0,
        "loader": LOADER,
    }
    return LabRun([local_artifact(p) for p in artifact_paths], options, **kw)


def _devices(client: Any, spec: str) -> list[dict[str, Any]]:
    return select_devices(list_devices(client), spec, "test")


def test_tampered_artifact_refused_on_arrival(lab: tuple[LocalLab, Any], tmp_path: Path) -> None:
    _, client = lab
    bad = artifact(tmp_path / "t", "fake-t", b"T")
    spec = _lab_run([bad])
    (bad / "model.bin").write_bytes(b"X" * 200)  # same size, other bytes than the manifest's
    results = ResultsFile(None)
    [run] = Lab(client, spec).run(_devices(client, "pi5"), results)
    [entry] = run["artifacts"]
    assert entry["lab"]["status"] == "refused"
    assert "refused on arrival: model.bin" in entry["lab"]["reason"]
    assert "sha256 differs from the manifest" in entry["lab"]["reason"]
    [names] = client.run(_store_names, workers=[_devices(client, "pi5")[0]["address"]]).values()
    assert names and all(spec.artifacts[0].artifact_id[:16] not in n for n in names)


def _store_names() -> list[str]:
    """What the device's content store holds (runs on the device)."""
    from edgerun.lab.store import store_dir

    return [p.name for p in store_dir().iterdir()]


def test_worker_killed_mid_run_fails_alone(
    lab: tuple[LocalLab, Any], artifacts: list[Path]
) -> None:
    cluster, client = lab
    cluster.add_worker("doomed", MACHINES / "raspberry-pi-4")
    cluster.wait_for(client, {"doomed"})
    slow = _lab_run(artifacts, gen_tokens=40, reps=3, rejoin_s=0.5)
    killed = threading.Event()

    def on_progress(device: str, message: str) -> None:
        if device == "doomed" and message.startswith("rep 2") and not killed.is_set():
            killed.set()
            cluster.kill("doomed")

    runs = Lab(client, slow, on_progress).run(_devices(client, "doomed,x86"), ResultsFile(None))
    assert killed.is_set()
    doomed, x86 = runs
    assert doomed["lab"]["status"] == "failed"
    assert "device doomed disconnected mid-run" in doomed["lab"]["reason"]
    assert {a["lab"]["status"] for a in doomed["artifacts"]} == {"failed"}
    assert x86["lab"]["status"] == "ok"
    assert all(len(a["reps"]) == 3 for a in x86["artifacts"])


def test_device_that_rejoins_is_retried_once(
    lab: tuple[LocalLab, Any], artifacts: list[Path]
) -> None:
    cluster, client = lab
    cluster.add_worker("phoenix", MACHINES / "raspberry-pi-4")
    cluster.wait_for(client, {"phoenix"})
    spec = _lab_run(artifacts, gen_tokens=40, reps=2, rejoin_s=60)
    killed = threading.Event()

    def on_progress(device: str, message: str) -> None:
        if device == "phoenix" and message.startswith("rep") and not killed.is_set():
            killed.set()
            cluster.kill("phoenix")
            cluster.add_worker("phoenix", MACHINES / "raspberry-pi-4")

    [run] = Lab(client, spec, on_progress).run(_devices(client, "phoenix"), ResultsFile(None))
    assert run["lab"]["status"] == "ok" and run["lab"]["attempts"] == 2, run["lab"]
    assert "disconnected mid-run" in run["lab"]["earlier_failures"][0]
    assert all(len(a["reps"]) == 2 for a in run["artifacts"])
    cluster.kill("phoenix")


def test_stalled_device_times_out(lab: tuple[LocalLab, Any], tmp_path: Path) -> None:
    cluster, client = lab
    cluster.add_worker("sloth", MACHINES / "raspberry-pi-4")
    cluster.wait_for(client, {"sloth"})
    slow = artifact(tmp_path / "slow", "fake-slow", b"S", decode_s=0.5)
    spec = _lab_run([slow], gen_tokens=8, stall_s=1.5)
    [run] = Lab(client, spec).run(_devices(client, "sloth"), ResultsFile(None))
    assert run["lab"]["status"] == "failed"
    assert "device sloth stalled: no progress for 1.5 s" in run["lab"]["reason"]
    cluster.kill("sloth")


def test_version_skew_reported(lab: tuple[LocalLab, Any]) -> None:
    cluster, client = lab
    cluster.add_worker("old", MACHINES / "graviton2", EDGERUN_LAB_LIBRARIES='{"edgerun": "0.0.9"}')
    cluster.wait_for(client, {"old"})
    result = runner.invoke(cli, ["lab", "devices", cluster.address, "--json"])
    [old] = [d for d in list_devices(client) if d["id"] == "old"]
    cluster.kill("old")
    # the staged version is advertised, never recorded as what measured (results use `installed`)
    assert old["libraries"]["edgerun"] == "0.0.9" != old["installed"]["edgerun"]
    assert old["fingerprint"]["posing"]["libraries"] == {"edgerun": "0.0.9"}
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.output)["warnings"]
    assert warnings == ["version skew on old: edgerun 0.0.9 (most devices: 0.1.0)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lab", "devices", f"127.0.0.1:{free_port()}"], "cannot reach the Dask scheduler at"),
        (["lab", "bench", "SCHED", "nope", *FAST], "nope does not exist"),
        (["lab", "bench", "SCHED", "ART", "--devices", "pi9", *FAST], "unknown device pi9"),
        (
            ["lab", "bench", "SCHED", "ART", "--devices", "profile:x", *FAST],
            "no connected device has profile 'x'",
        ),  # fmt: skip
        (["lab", "devices", "SCHED", "--tls-ca-file", __file__], "TLS needs all of"),
        (["lab", "bench", "SCHED", "ART", "--profile", "my.toml", *FAST], "takes a profile id"),
        (["lab", "bench", "SCHED", "ART", "--profile", "pi9", *FAST], "unknown profile 'pi9'"),
    ],
)
def test_bad_input_is_one_line(
    lab: tuple[LocalLab, Any], artifacts: list[Path], args: list[str], message: str
) -> None:
    cluster, _ = lab
    args = [cluster.address if a == "SCHED" else str(artifacts[0]) if a == "ART" else a for a in args]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_dask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    with pytest.raises(EdgerunError, match=r"pip install 'edgerun\[lab\]'"):
        connect("127.0.0.1:1")
