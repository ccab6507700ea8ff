"""Lab mode over TLS on a real local cluster: a scheduler and a device worker started with
--tls-ca-file/--tls-cert/--tls-key (a throwaway CA made with the `openssl` CLI), listed over TLS
through the CLI, and a client without TLS refused with a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from edgerun.cli import cli  # noqa: E402
from edgerun.lab.cluster import connect, tls_from_options  # noqa: E402
from tests.lab_cluster import MACHINES, LocalLab  # noqa: E402

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_lab_ca(root: Path) -> dict[str, Path]:
    """A lab CA and one node certificate it signed (for 127.0.0.1 / localhost), PEM files."""
    root.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=edgerun test lab CA", cwd=root)  # fmt: skip
    _openssl("req", *EC, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=edgerun-lab",
             cwd=root)  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "node.pem", "-days", "1", "-extfile", "san.ext",
             cwd=root)  # fmt: skip
    return {"ca": root / "ca.pem", "cert": root / "node.pem", "key": root / "node.key"}


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalLab, list[str]]]:
    """A TLS-only scheduler and one device (posing as a Pi 5), both given the TLS options."""
    root = tmp_path_factory.mktemp("lab-tls")
    pem = make_lab_ca(root / "pki")
    tls_args = ["--tls-ca-file", str(pem["ca"]), "--tls-cert", str(pem["cert"])]
    tls_args += ["--tls-key", str(pem["key"])]
    cluster = LocalLab(root, tls_args=tls_args)
    try:
        cluster.add_worker("pi5", MACHINES / "raspberry-pi-5")
        tls = tls_from_options(str(pem["ca"]), str(pem["cert"]), str(pem["key"]))
        with connect(cluster.address, tls) as client:
            cluster.wait_for(client, {"pi5"})
        yield cluster, tls_args
    finally:
        cluster.close()


def test_device_listed_over_tls(tls_lab: tuple[LocalLab, list[str]]) -> None:
    cluster, tls_args = tls_lab
    assert cluster.address.startswith("tls://")
    host_port = cluster.address.removeprefix("tls://")  # the CLI picks tls:// from the options
    result = CliRunner().invoke(cli, ["lab", "devices", host_port, "--json", *tls_args])
    assert result.exit_code == 0, result.output
    [device] = json.loads(result.output)["devices"]
    assert (device["id"], device["profile"]) == ("pi5", "raspberry-pi-5")
    assert device["address"].startswith("tls://127.0.0.1:")


@pytest.mark.parametrize("scheme", ["", "tcp://"])
def test_client_without_tls_is_refused(
    tls_lab: tuple[LocalLab, list[str]], scheme: str, monkeypatch: Any
) -> None:
    cluster, _ = tls_lab
    monkeypatch.setattr("edgerun.lab.cluster.CONNECT_TIMEOUT_S", 5)
    address = scheme + cluster.address.removeprefix("tls://")
    result = CliRunner().invoke(cli, ["lab", "devices", address])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        f"error: cannot reach the Dask scheduler at tcp://{address.removeprefix('tcp://')}: "
    )
    assert result.output.rstrip().endswith(
        "a TLS lab needs --tls-ca-file/--tls-cert/--tls-key here too)"
    )
    assert len(result.output.strip().splitlines()) == 1
