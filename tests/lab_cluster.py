"""A real local Dask lab for tests (edgerun.lab.local): one scheduler and `edgerun lab worker`
processes on loopback, each posing as a device of tests/data/machines; fake-backend artifacts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.core.manifest import file_entries, read_manifest, write_manifest
from edgerun.lab import local
from tests.bench_fake import make_artifact

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "tests" / "data" / "machines"
LOADER = "tests.bench_fake:load"


class LocalLab(local.LocalLab):
    """edgerun.lab.local.LocalLab with this checkout on every process's PYTHONPATH (for the
    fake backend, LOADER)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(root, {"PYTHONPATH": str(ROOT), **(env or {})}, **kw)


@contextlib.contextmanager
def running_lab(root: Path, machines: dict[str, Path]) -> Iterator[tuple[LocalLab, Any]]:
    """A LocalLab with a worker per {name: machine-facts dir}, all joined, and a client on it;
    every process killed on exit."""
    from edgerun.lab.cluster import connect

    cluster = LocalLab(root)
    try:
        for name, machine in machines.items():
            cluster.add_worker(name, machine)
        with connect(cluster.address) as client:
            cluster.wait_for(client, set(machines))
            yield cluster, client
    finally:
        cluster.close()


def tiny_machine(root: Path, ram_bytes: int) -> Path:
    """A copy of the i7-8700 machine with `ram_bytes` of RAM (so its profile's budget is tiny)."""
    src = MACHINES / "x86-avx2-i7-8700"
    dest = root / "tiny-machine"
    (dest / "root" / "proc").mkdir(parents=True)
    (dest / "root" / "proc" / "cpuinfo").write_text((src / "root/proc/cpuinfo").read_text())
    spec = (src / "machine.toml").read_text() + f"ram_bytes = {ram_bytes}\n"
    (dest / "machine.toml").write_text(spec)
    return dest


def artifact(path: Path, name: str, payload: bytes = b"weights", **fake: Any) -> Path:
    """A fake-backend artifact (tests/bench_fake.py) whose manifest lists its files' real
    sha256, so a device's arrival check passes; `payload` makes its content (and id) unique."""
    make_artifact(path, name, **fake)
    (path / "model.bin").write_bytes(payload * 200)
    manifest = read_manifest(path)
    manifest["files"] = file_entries(path)
    write_manifest(path, {k: v for k, v in manifest.items() if k != "schema_version"})
    return path


def results_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
