"""A real local Dask lab for tests: one scheduler and `edgerun lab worker` processes on
loopback ports chosen at runtime, each posing as a device of tests/data/machines, each with
its own EDGERUN_HOME (its own content store). Everything is killed at teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgerun.manifest import file_entries, read_manifest, write_manifest
from tests.bench_fake import make_artifact

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "tests" / "data" / "machines"
LOADER = "tests.bench_fake:load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLab:
    """Scheduler and worker processes; `add_worker` starts one posing as a machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._start("scheduler", ["scheduler", "--port", self.address.rsplit(":", 1)[1]], {})
        self._wait_port()

    def _start(self, key: str, args: list[str], env: dict[str, str]) -> None:
        home = self.root / key
        home.mkdir(exist_ok=True)
        full_env = {**os.environ, "EDGERUN_HOME": str(home), "PYTHONPATH": str(ROOT), **env}
        log = open(self.root / f"{key}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "lab", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_port(self, timeout: float = 30) -> None:
        port = int(self.address.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"scheduler did not start: {self.log('scheduler')}")

    def add_worker(self, name: str, machine: Path, **env: str) -> None:
        """Start `edgerun lab worker` named `name`, posing as machine-facts dir `machine`."""
        self._start(name, ["worker", self.address, "--name", name, "--machine", str(machine)], env)

    def wait_for(self, client: Any, names: set[str], timeout: float = 60) -> None:
        """Until exactly the workers `names` are connected (or fail naming what is missing)."""
        deadline = time.monotonic() + timeout
        have: set[str] = set()
        while time.monotonic() < deadline:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            have = {str(w.get("name")) for w in workers.values()}
            if names <= have:
                return
            time.sleep(0.1)
        raise RuntimeError(f"workers {names - have} did not join: " + self.log(*(names - have)))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log(self, *keys: str) -> str:
        return " | ".join((self.root / f"{k}.log").read_text()[-1500:] for k in keys)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name == "scheduler" else signal.SIGKILL)


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
