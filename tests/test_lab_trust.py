"""Lab mode's trust boundaries on a real local cluster (issue 21): a hostile device cannot run
code on the lab host, workers listen only where the scheduler is, no HTTP info is served, a
staged upload cannot replace its own manifest, and the host's view of liveness survives a busy
device and a lost scheduler."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

from edgerun.cli import cli  # noqa: E402
from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.core.manifest import MANIFEST_NAME, read_manifest, write_manifest  # noqa: E402
from edgerun.lab import store  # noqa: E402
from edgerun.lab.cluster import connect  # noqa: E402
from tests.bench_fake import make_artifact  # noqa: E402
from tests.lab_cluster import LOADER, MACHINES, ROOT, LocalLab, artifact, results_json  # noqa: E402

pytestmark = pytest.mark.timeout(120)
HOST = "127.0.0.2"  # a loopback address other than 127.0.0.1: where must the worker listen?
FAST = ["--reps", "1", "--warmup", "0", "--prompt-tokens", "8", "--gen-tokens", "4"]
FAST += ["--idle-seconds", "0", "--power", "none", "--loader", LOADER]
# A device with a modified edgerun: what it returns unpickles into open(marker, "w").
HOSTILE = """
import os
import edgerun.lab.device as device, edgerun.lab.remote as remote

class Hostile(dict):
    def __reduce__(self):
        return (open, (os.environ["HOSTILE_MARKER"], "w"))

_advertise = device.advertise
if os.environ.get("HOSTILE_IN") == "advertise":
    device.advertise = lambda name: Hostile(_advertise(name))
if os.environ.get("HOSTILE_IN") == "bench":
    remote.bench_on_device = lambda *args: {"runs": Hostile()}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalLab, Any, Path]]:
    """A scheduler on 127.0.0.2, a plain device and two hostile ones (one lies in its
    advertisement, one in its bench results); yields the lab, a client and the marker path."""
    root = tmp_path_factory.mktemp("lab-trust")
    stub = root / "hostile"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(HOSTILE)
    marker = root / "PWNED"
    cluster = LocalLab(root, host=HOST)
    try:
        cluster.add_worker("plain", MACHINES / "raspberry-pi-5")
        for name, where in (("evil-ad", "advertise"), ("evil-run", "bench")):
            cluster.add_worker(
                name,
                MACHINES / "raspberry-pi-5",
                PYTHONPATH=f"{stub}{os.pathsep}{ROOT}",
                HOSTILE_IN=where,
                HOSTILE_MARKER=str(marker),
            )
        with connect(cluster.address) as client:
            cluster.wait_for(client, {"plain", "evil-ad", "evil-run"})
            yield cluster, client, marker
    finally:
        cluster.close()


def test_hostile_device_runs_no_code_on_the_host(
    lab: tuple[LocalLab, Any, Path], tmp_path: Path
) -> None:
    cluster, _, marker = lab
    listed = CliRunner().invoke(cli, ["lab", "devices", cluster.address, "--json"])
    assert listed.exit_code == 0, listed.output
    by_id = {d["id"]: d for d in json.loads(listed.output)["devices"]}
    assert by_id["plain"]["profile"] == "raspberry-pi-5"
    assert by_id["evil-ad"]["error"] == (
        "refused a pickled io.open: the lab host loads plain data only"
    )
    out = tmp_path / "r.json"
    art = artifact(tmp_path / "a", "fake-a", b"A")
    args = ["lab", "bench", cluster.address, str(art), "--devices", "plain,evil-run", *FAST]
    result = CliRunner().invoke(cli, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    runs = {r["lab"]["device"]: r["lab"] for r in results_json(out)["runs"]}
    assert runs["plain"]["status"] == "ok"
    assert runs["evil-run"]["status"] == "failed"
    reason = runs["evil-run"]["reason"]
    assert "device evil-run refused a pickled io.open" in reason and "\n" not in reason
    assert not marker.exists()  # neither this process, nor the scheduler, unpickled it


def _touch(path: str) -> None:
    Path(path).touch()


def test_nodes_refuse_handlers_lab_never_uses(
    lab: tuple[LocalLab, Any, Path], tmp_path: Path
) -> None:
    _, client, _ = lab
    ran = tmp_path / "ran-on-scheduler"
    # Dask's refusal arrives as a pickled exception, which the host does not load: its bytes
    with pytest.raises(Exception, match=r"run_function.{1,6} handler has been explicitly disallowed"):  # fmt: skip
        client.run_on_scheduler(_touch, str(ran))
    plugin = tmp_path / "edgerun_lab_uploaded.py"
    plugin.write_text("")
    with pytest.raises(Exception, match="handler has been explicitly disallowed"):
        client.upload_file(str(plugin))
    assert not ran.exists()


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (IP address, port) pairs process `pid` listens on (TCP)."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


def test_workers_listen_only_where_the_scheduler_is(lab: tuple[LocalLab, Any, Path]) -> None:
    cluster, _, _ = lab
    for name in ("plain", "evil-ad"):
        assert {ip for ip, _ in _listening(cluster.procs[name].pid)} == {"127.0.0.1"}, name
    assert {ip for ip, _ in _listening(cluster.procs["scheduler"].pid)} <= {HOST, "127.0.0.1"}


def test_no_dashboard_or_json_info(lab: tuple[LocalLab, Any, Path]) -> None:
    """Every HTTP listener of the scheduler and the workers (all but their Dask ports) serves
    nothing: Dask's JSON info, dashboard, health and metrics routes are all gone."""
    cluster, client, _ = lab
    dask_ports = {int(a.rsplit(":", 1)[1]) for a in [cluster.address, *client.scheduler_info()["workers"]]}  # fmt: skip
    http = {
        (ip, port)
        for name in ("scheduler", "plain")
        for ip, port in _listening(cluster.procs[name].pid)
        if port not in dask_ports
    }
    assert http  # Dask always starts its HTTP server: it must answer nothing
    for ip, port in http:
        for path in ("/json/identity.json", "/info/main/workers.html", "/health", "/metrics"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=5)
            assert caught.value.code == 404, (ip, port, path)


@pytest.mark.parametrize("scheduler", ["tcp://192.0.2.1:8786", "192.0.2.1:8786"])
def test_worker_refuses_plain_tcp_off_this_host(scheduler: str) -> None:
    result = CliRunner().invoke(cli, ["lab", "worker", scheduler, "--name", "x"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: refusing to join {scheduler} without TLS")
    assert "--insecure" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", [MANIFEST_NAME, f"./{MANIFEST_NAME}", f"sub/../{MANIFEST_NAME}"])
def test_staged_upload_cannot_overwrite_its_manifest(name: str, tmp_path: Path) -> None:
    """A manifest listing itself as a file: a chunk written there would replace, mid-transfer,
    the manifest the arrival check reads (and store other files under this artifact's id)."""
    forged = b'{"schema_version": 1, "format": "x", "family": "onnx", "files": []}'
    entry = {"name": name, "bytes": len(forged), "sha256": hashlib.sha256(forged).hexdigest()}
    art = make_artifact(tmp_path / "a", "fake-m")
    fields = {k: v for k, v in read_manifest(art).items() if k != "schema_version"}
    write_manifest(art, {**fields, "files": [entry]})
    manifest = (art / MANIFEST_NAME).read_bytes()
    artifact_id = hashlib.sha256(manifest).hexdigest()
    try:
        token = store.begin(artifact_id, manifest)
    except EdgerunError as exc:  # a name the manifest check already refuses
        assert name != MANIFEST_NAME and "outside" in exc.message
        return
    with pytest.raises(EdgerunError, match="would overwrite the artifact's own manifest"):
        store.write_chunk(artifact_id, token, name, 0, forged)
    with pytest.raises(EdgerunError, match="refused on arrival"):
        store.finish(artifact_id, token)
    assert store.artifact_path(artifact_id) is None


def test_a_device_benches_through_edgerun_bench_run() -> None:
    """The lab's bench on a device is `edgerun bench`'s one library entry point, not a second
    wiring of the harness beside it."""
    import ast

    import edgerun.lab.remote as remote

    tree = ast.parse(Path(remote.__file__).read_text(encoding="utf-8"))
    imported = {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert "edgerun.bench.run" in imported
    assert not any(name.startswith("edgerun.bench.harness") for name in imported)
