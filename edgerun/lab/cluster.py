"""The Dask side of lab mode: TLS settings, starting a scheduler or a device worker, connecting
a client, and listing and choosing devices.

A Dask cluster runs any code a client sends it, so the scheduler binds 127.0.0.1 unless told
otherwise, and a lab network should use TLS (``--tls-ca-file/--tls-cert/--tls-key``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from edgerun.errors import EdgerunError
from edgerun.lab import require_dask

DEFAULT_PORT = 8786
CONNECT_TIMEOUT_S = 10
TLS_OPTIONS = "--tls-ca-file/--tls-cert/--tls-key"
START_HINT = "start one with `edgerun lab scheduler` (or `dask scheduler`) and check the address"


@dataclass(frozen=True)
class Tls:
    """Dask TLS files: the lab's CA, and this node's certificate and key (PEM)."""

    ca_file: str
    cert: str
    key: str

    def security(self) -> Any:
        """The distributed.Security object: every role (scheduler, worker, client) presents the
        same certificate signed by the lab CA, and plain TCP is refused."""
        from distributed.security import Security

        return Security(
            tls_ca_file=self.ca_file,
            **{
                f"tls_{role}_{part}": getattr(self, part)
                for role in ("scheduler", "worker", "client")
                for part in ("cert", "key")
            },
            require_encryption=True,
        )


def tls_from_options(ca_file: str | None, cert: str | None, key: str | None) -> Tls | None:
    """Tls when all three options are given, None when none is; EdgerunError otherwise."""
    given = [v for v in (ca_file, cert, key) if v]
    if not given:
        return None
    if len(given) != 3:
        raise EdgerunError(
            "TLS needs all of --tls-ca-file, --tls-cert and --tls-key",
            "pass the lab CA, this node's certificate and its key",
        )
    return Tls(str(ca_file), str(cert), str(key))


def _address(scheduler: str, tls: Tls | None) -> str:
    if "://" in scheduler:
        return scheduler
    return f"{'tls' if tls else 'tcp'}://{scheduler}"


def connect(scheduler: str, tls: Tls | None = None, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A distributed.Client on `scheduler`; EdgerunError when it cannot be reached."""
    require_dask()
    from distributed import Client

    address = _address(scheduler, tls)
    security = tls.security() if tls else None
    try:
        return Client(address, security=security, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        # a TLS-only scheduler resets a plain-TCP client: say what it may be missing
        hint = START_HINT if tls else f"{START_HINT}; a TLS lab needs {TLS_OPTIONS} here too"
        raise EdgerunError(
            f"cannot reach the Dask scheduler at {address}: {str(exc).splitlines()[0]:.160}",
            hint,
        ) from exc


def run_scheduler(host: str, port: int, tls: Tls | None, ready: Any = None) -> None:
    """Run a Dask scheduler until interrupted; `ready(address)` is called once it listens."""
    require_dask()
    from distributed import Scheduler

    async def main() -> None:
        security = tls.security() if tls else None
        protocol = "tls" if tls else "tcp"
        async with Scheduler(
            host=host, port=port, protocol=protocol, security=security, dashboard=False
        ) as scheduler:
            if ready:
                ready(scheduler.address)
            await scheduler.finished()

    asyncio.run(main())


def run_worker(scheduler: str, name: str, tls: Tls | None, ready: Any = None) -> None:
    """Run one Dask worker for this device until interrupted: one task slot (benchmarks on a
    device never overlap), no memory limit (a model may use the RAM), named `name`."""
    require_dask()
    from distributed import Worker

    from edgerun.home import cache_dir
    from edgerun.lab.device import advertise

    info = advertise(name)  # detection once, before any task runs

    async def main() -> None:
        async with Worker(
            _address(scheduler, tls),
            name=name,
            nthreads=1,
            memory_limit=0,
            resources={"edgerun-device": 1},
            security=tls.security() if tls else None,
            local_directory=str(cache_dir("lab/dask")),
            host="127.0.0.1" if _loopback(scheduler) else None,
        ) as worker:
            if ready:
                ready(worker.address, info)
            await worker.finished()

    try:
        asyncio.run(main())
    except (OSError, TimeoutError) as exc:
        raise EdgerunError(
            f"cannot join the Dask scheduler at {scheduler}: {exc}", START_HINT
        ) from exc


def _loopback(scheduler: str) -> bool:
    host = scheduler.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def _advertise(dask_worker: Any) -> dict[str, Any]:
    from edgerun.lab.device import advertise

    return advertise(str(dask_worker.name))


def list_devices(client: Any) -> list[dict[str, Any]]:
    """Every connected device's advertisement (edgerun.lab.device.advertise) with its Dask
    address, sorted by id; a worker that cannot answer is listed with its error."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    answers = client.run(_advertise, on_error="return") if workers else {}
    devices = []
    for address, meta in workers.items():
        answer = answers.get(address)
        if isinstance(answer, dict):
            devices.append({**answer, "address": address})
        else:
            devices.append({"id": str(meta.get("name")), "address": address, "error": str(answer)})
    return sorted(devices, key=lambda d: d["id"])


def select_devices(
    devices: list[dict[str, Any]], spec: str, scheduler: str
) -> list[dict[str, Any]]:
    """The devices `spec` names: "all", "ID,ID,...", or "profile:PROFILE_ID"."""
    usable = [d for d in devices if "error" not in d]
    if not usable:
        raise EdgerunError(
            f"no devices are connected to {scheduler}",
            f"start `edgerun lab worker {scheduler}` on each device",
        )
    known = ", ".join(d["id"] for d in usable)
    if spec == "all":
        return usable
    if spec.startswith("profile:"):
        chosen = [d for d in usable if d.get("profile") == spec[len("profile:") :]]
        if not chosen:
            profiles = ", ".join(sorted({str(d.get("profile")) for d in usable}))
            raise EdgerunError(f"no connected device has profile {spec[8:]!r}", f"have: {profiles}")
        return chosen
    by_id = {d["id"]: d for d in usable}
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_id]
    if unknown or not wanted:
        named = ", ".join(unknown) or repr(spec)
        raise EdgerunError(f"unknown device {named}", f"connected: {known}")
    return [by_id[w] for w in wanted]
