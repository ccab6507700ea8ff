"""The Dask side of lab mode: TLS settings, starting a scheduler or a device worker, connecting
a client, and listing and choosing devices.

A Dask node runs code its peers send it, so the scheduler binds 127.0.0.1 unless told otherwise,
a worker listens only on the interface that reaches its scheduler and refuses a non-loopback
scheduler without TLS (``--insecure`` overrides), and a lab network should use TLS
(``--tls-ca-file/--tls-cert/--tls-key``). Both serve no HTTP routes (no dashboard, no JSON
info) and refuse the Dask handlers lab never uses (BLOCKED_*). The host reads devices'
answers as plain data only (edgerun.lab.guard).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.untrusted import is_loopback
from edgerun.lab import require_dask

DEFAULT_PORT = 8786
#: Scheduler handlers that run code or change the cluster, which lab never sends.
BLOCKED_SCHEDULER = [
    "run_function", "feed", "register_scheduler_plugin", "unregister_scheduler_plugin",
    "register_worker_plugin", "unregister_worker_plugin", "register_nanny_plugin",
    "unregister_nanny_plugin", "dump_cluster_state_to_url", "restart", "restart_workers",
    "benchmark_hardware",
]  # fmt: skip
#: Worker handlers that run code or write files on the device, which lab never sends.
BLOCKED_WORKER = [
    "run_coroutine", "upload_file", "plugin-add", "plugin-remove", "actor_execute",
    "actor_attribute", "benchmark_disk", "benchmark_memory", "benchmark_network",
]  # fmt: skip
NO_HTTP = "127.0.0.1:0"  # the HTTP server Dask always starts: loopback, and no routes
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
    """A distributed.Client on `scheduler` that loads plain data only from its peers
    (edgerun.lab.guard); EdgerunError when it cannot be reached."""
    require_dask()
    from edgerun.lab import guard

    guard.install()
    address = _address(scheduler, tls)
    security = tls.security() if tls else None
    try:
        return guard.host_client_class()(
            address, security=security, timeout=timeout, set_as_default=False
        )
    except (OSError, TimeoutError, ValueError) as exc:
        # a TLS-only scheduler resets a plain-TCP client: say what it may be missing
        hint = START_HINT if tls else f"{START_HINT}; a TLS lab needs {TLS_OPTIONS} here too"
        raise EdgerunError(
            f"cannot reach the Dask scheduler at {address}: {str(exc).splitlines()[0]:.160}",
            hint,
        ) from exc


def _server_config() -> Any:
    """Dask settings of lab's scheduler and workers: no HTTP routes, and the blocked handlers."""
    import dask

    return dask.config.set(
        {
            "distributed.scheduler.http.routes": [],
            "distributed.worker.http.routes": [],
            "distributed.scheduler.blocked-handlers": BLOCKED_SCHEDULER,
            "distributed.worker.blocked-handlers": BLOCKED_WORKER,
        }
    )


def run_scheduler(host: str, port: int, tls: Tls | None, ready: Any = None) -> None:
    """Run a Dask scheduler until interrupted; `ready(address)` is called once it listens."""
    require_dask()
    from distributed import Scheduler

    async def main() -> None:
        security = tls.security() if tls else None
        protocol = "tls" if tls else "tcp"
        async with Scheduler(
            host=host,
            port=port,
            protocol=protocol,
            security=security,
            dashboard=False,
            dashboard_address=NO_HTTP,
        ) as scheduler:
            if ready:
                ready(scheduler.address)
            await scheduler.finished()

    with _server_config():
        asyncio.run(main())


def run_worker(
    scheduler: str, name: str, tls: Tls | None, ready: Any = None, insecure: bool = False
) -> None:
    """Run one Dask worker for this device until interrupted: one task slot (benchmarks on a
    device never overlap), no memory limit (a model may use the RAM), named `name`, listening
    only on the interface that reaches the scheduler. EdgerunError for a scheduler off this
    host without TLS, unless `insecure`."""
    require_dask()
    host = scheduler_host(scheduler)
    if not tls and not insecure and not is_loopback(host):
        raise EdgerunError(
            f"refusing to join {scheduler} without TLS: anyone on that network could run code "
            "on this device",
            f"pass {TLS_OPTIONS} (the lab's CA and this device's certificate), or --insecure",
        )
    from distributed import Worker
    from distributed.utils import get_ip

    from edgerun.core.home import cache_dir
    from edgerun.lab.device import advertise

    info = advertise(name)  # detection once, before any task runs
    listen = "127.0.0.1" if is_loopback(host) else get_ip(host)

    async def main() -> None:
        async with Worker(
            _address(scheduler, tls),
            name=name,
            nthreads=1,
            memory_limit=0,
            resources={"edgerun-device": 1},
            security=tls.security() if tls else None,
            local_directory=str(cache_dir("lab/dask")),
            host=listen,
            dashboard_address=NO_HTTP,
        ) as worker:
            if ready:
                ready(worker.address, info)
            await worker.finished()

    try:
        with _server_config():
            asyncio.run(main())
    except (OSError, TimeoutError) as exc:
        raise EdgerunError(
            f"cannot join the Dask scheduler at {scheduler}: {exc}", START_HINT
        ) from exc


def scheduler_host(scheduler: str) -> str:
    """The host part of a scheduler address (``tls://10.0.0.2:8786`` -> ``10.0.0.2``)."""
    host = scheduler.split("://")[-1]
    if host.count(":") == 1 or host.startswith("["):
        host = host.rsplit(":", 1)[0]
    return host.strip("[]")


def list_devices(client: Any) -> list[dict[str, Any]]:
    """Every connected device's advertisement (edgerun.lab.device.advertise, checked as plain
    data) with its Dask address, sorted by id; a worker whose answer is missing or refused is
    listed with its one-line error."""
    from edgerun.lab.device import advertise
    from edgerun.lab.guard import check_advertisement, refusal
    from edgerun.lab.remote import call

    workers = client.scheduler.identity  # fresh from the scheduler, not the client's cache
    devices = []
    for address, meta in client.sync(workers, n_workers=-1)["workers"].items():
        name = str(meta.get("name"))[:200]
        try:
            [answer] = client.run(call, advertise, name, workers=[address]).values()
            devices.append({**check_advertisement(answer, name), "address": address})
        except Exception as exc:  # a device that cannot answer, or answers what is refused
            why = refusal(exc) or (str(exc).splitlines() or [type(exc).__name__])[0]
            devices.append({"id": name, "address": address, "error": why[:300]})
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
