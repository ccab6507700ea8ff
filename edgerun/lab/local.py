"""A lab simulated on one host, for tests and benchmarks: a Dask scheduler and `edgerun lab
worker` processes on loopback ports chosen at run time, each worker with its own EDGERUN_HOME
(its own content store) and optionally posing as another machine (edgerun.lab.device).

Its numbers are this host's: a posing worker's results say so (`posing` in their device block).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` (a loopback address) that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalLab:
    """A scheduler process under `root` (logs and homes there); `add_worker` starts a device.

    `env` is added to every process's environment; `tls_args` (the `--tls-*` options and their
    files) makes it a TLS lab; `host` is the scheduler's loopback address. `close()` kills every
    process it started."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        tls_args: list[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.env = dict(env or {})
        self.tls_args = list(tls_args or [])
        self.host = host
        port = free_port(host)
        self.address = f"{'tls' if self.tls_args else 'tcp'}://{host}:{port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._start("scheduler", ["scheduler", "--host", host, "--port", str(port)], {})
        self._wait_port(port)

    def _start(self, key: str, args: list[str], env: dict[str, str]) -> None:
        home = self.root / key
        home.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "EDGERUN_HOME": str(home), **self.env, **env}
        log = open(self.root / f"{key}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "lab", *args, *self.tls_args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # killed as a group: the bench's own subprocesses too
        )
        log.close()

    def _wait_port(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, port)) == 0:
                    return
            if self.procs["scheduler"].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"scheduler did not start: {self.log('scheduler')}")

    def add_worker(self, name: str, machine: Path | None = None, **env: str) -> None:
        """Start `edgerun lab worker` named `name`, posing as machine-facts dir `machine` (a
        lab-simulation aid) or, without one, as this host."""
        pose = ["--machine", str(machine)] if machine is not None else []
        self._start(name, ["worker", self.address, "--name", name, *pose], env)

    def wait_for(self, client: Any, names: set[str], timeout: float = 60) -> None:
        """Until the workers `names` are connected (RuntimeError naming the missing ones)."""
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
        """Stop process `name` (and its process group) with `sig`."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log(self, *keys: str) -> str:
        """The last lines each of the named processes wrote."""
        return " | ".join((self.root / f"{k}.log").read_text()[-1500:] for k in keys)

    def close(self) -> None:
        """Kill every process started here."""
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name == "scheduler" else signal.SIGKILL)
