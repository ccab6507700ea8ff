"""`lab bench`: ship artifacts to every chosen device and run the bench there, all devices at
once, one thread per device on the host, every Dask task pinned to that device's worker.

Faults: a device whose worker leaves the cluster is recorded as failed with the reason; if a
worker of the same name rejoins within `rejoin_s`, that device is retried once. A device that
reports no progress for `stall_s` times out. Ctrl-C (or `cancel()`) stops every device between
two repetitions. Each device's run is written to the results file as soon as it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.lab.guard import check_run, refusal, unwrap
from edgerun.lab.remote import (
    PROGRESS_TOPIC,
    bench_on_device,
    call,
    cancel_event_name,
    decline_reason,
)
from edgerun.lab.results import ResultsFile, failed_run, unmeasured
from edgerun.lab.ship import LocalArtifact, ship

POLL_S = 0.2
HINT = "the device's answer was refused; check it runs an unmodified edgerun"
OnProgress = Callable[[str, str], None]


class DeviceLost(EdgerunError):
    """The device's worker left the cluster."""


class Stalled(EdgerunError):
    """The device reported no progress for too long."""


class Cancelled(EdgerunError):
    """The lab run was cancelled on the host."""


class SchedulerLost(EdgerunError):
    """The lab host lost its connection to the Dask scheduler: no device can go on."""


def check_profile(profile: str | None) -> None:
    """Refuse, before anything is shipped, a --profile that is not a shipped profile id: a
    TOML path names a file on this host, which the devices do not have."""
    if profile is None:
        return
    from edgerun.device.profile import get_profile

    if profile.endswith(".toml") or "/" in profile or "\\" in profile:
        raise EdgerunError(
            f"lab bench takes a profile id, not a file ({profile!r:.80}): devices lack this host's files",
            "pass a shipped profile id (`edgerun profiles list`), or leave each device its own",
        )
    get_profile(profile)  # an unknown id: EdgerunError listing the known ones


@dataclass
class LabRun:
    """Options of one lab bench (see edgerun.lab.remote.bench_on_device for `options`)."""

    artifacts: list[LocalArtifact]
    options: dict[str, Any]
    stall_s: float = 300.0
    rejoin_s: float = 60.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class Lab:
    """One lab bench over `client`'s devices; `run(devices, results)` drives it."""

    def __init__(self, client: Any, spec: LabRun, on_progress: OnProgress | None = None) -> None:
        self.client = client
        self.spec = spec
        self.on_progress = on_progress or (lambda _d, _m: None)
        self.cancelled = threading.Event()
        self.seen: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self._workers: dict[str, str] = {}
        self._polled = 0.0
        self._lock = threading.Lock()
        self.scheduler_lost: SchedulerLost | None = None

    # -- the cluster as seen from here ---------------------------------------------------------

    def workers(self) -> dict[str, str]:
        """{device id: worker address} as the scheduler has them now (asked at most every
        POLL_S). Asked directly: the client's scheduler_info() cache is replaced every 2 s by a
        summary without workers, which made a busy host see live devices vanish."""
        with self._lock:
            if time.monotonic() - self._polled > POLL_S:
                try:
                    info = self.client.sync(self.client.scheduler.identity, n_workers=-1)
                except (OSError, TimeoutError, asyncio.TimeoutError):
                    raise self._lost() from None
                self._workers = {str(m.get("name")): a for a, m in info["workers"].items()}
                self._polled = time.monotonic()
            return dict(self._workers)

    def _lost(self) -> SchedulerLost:
        return SchedulerLost(
            f"lost the lab scheduler at {self.client.scheduler.address} mid-run",
            "restart `edgerun lab scheduler` and the devices' workers, then run `lab bench` "
            "again (--append adds to the results file)",
        )

    def progress(self, device_id: str, message: str) -> None:
        self.seen[device_id] = time.monotonic()
        self.on_progress(device_id, message)

    def _event(self, event: Any) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if isinstance(msg, dict) and str(msg.get("run")).startswith(self.spec.run_id):
            self.progress(str(msg.get("device")), str(msg.get("message")))

    def wait(self, device_id: str, address: str, future: Any) -> Any:
        """future.result(), unless the device leaves, stalls, or the run is cancelled."""
        while True:
            try:
                result = future.result(timeout=POLL_S)
                self.seen[device_id] = time.monotonic()
                return result
            except (TimeoutError, asyncio.TimeoutError):
                pass
            except Exception as exc:
                refused = refusal(exc)
                if refused is not None:
                    raise EdgerunError(f"device {device_id} {refused}", HINT) from None
                if self.client.status != "running" or "scheduler-connection-lost" in str(exc):
                    raise self._lost() from None
                raise
            why: EdgerunError | None = None
            if self.cancelled.is_set():
                why = Cancelled("cancelled on the lab host (Ctrl-C)")
            elif self.workers().get(device_id) != address:
                why = DeviceLost(
                    f"device {device_id} disconnected mid-run: the scheduler no longer has its "
                    f"worker at {address}"
                )
            elif time.monotonic() - self.seen.get(device_id, 0) > self.spec.stall_s:
                why = Stalled(
                    f"device {device_id} stalled: no progress for {self.spec.stall_s:g} s"
                )
            if why is not None:
                future.cancel()
                self.stop_device(device_id)
                raise why

    def run_key(self, device_id: str) -> str:
        """This run's id and the device's attempt: a retry is not stopped by the first's flag."""
        return f"{self.spec.run_id}-{self.attempts.get(device_id, 1)}"

    def stop_device(self, device_id: str) -> None:
        """Ask a device to stop this run's bench at its next step (between repetitions)."""
        from distributed import Event

        name = cancel_event_name(self.run_key(device_id), device_id)
        with contextlib.suppress(Exception):  # the scheduler is gone: nothing left to stop
            Event(name, client=self.client).set()

    def cancel(self, device_ids: list[str]) -> None:
        """Stop every device's work (between two repetitions on the device)."""
        self.cancelled.set()
        for device_id in device_ids:
            self.stop_device(device_id)

    # -- one device ----------------------------------------------------------------------------

    def _attempt(self, device: dict[str, Any], address: str) -> dict[str, Any]:
        dev_id = device["id"]
        profile = self.spec.options["workload"].get("profile")
        entries: list[dict[str, Any] | None] = []
        accepted: list[LocalArtifact] = []
        shipped: dict[str, int] = {}
        for art in self.spec.artifacts:
            name = art.info["name"]
            reason = self.on_device(dev_id, address, decline_reason, dev_id, art.info, profile)
            if reason is not None and not isinstance(reason, str):
                raise EdgerunError(f"device {dev_id} declined with a {type(reason).__name__}", HINT)
            if reason:
                entries.append(unmeasured(art.info, "declined", reason))
                continue
            self.progress(dev_id, f"ship {name}")
            try:
                shipped[name] = ship(
                    self.client, address, art, lambda f: self.wait(dev_id, address, f)
                )
            except (DeviceLost, Stalled, Cancelled, SchedulerLost):
                raise
            except EdgerunError as exc:
                entries.append(unmeasured(art.info, "refused", str(exc)))
                continue
            entries.append(None)
            accepted.append(art)
        run = self._bench(device, address, accepted)
        measured = iter(run["artifacts"])
        run["artifacts"] = [e if e is not None else next(measured) for e in entries]
        run["lab"] = {"device": dev_id, "status": "ok", "reason": None, "shipped": shipped}
        return run

    def _bench(
        self, device: dict[str, Any], address: str, arts: list[LocalArtifact]
    ) -> dict[str, Any]:
        if not arts:
            return failed_run(device, [], self.spec.options["workload"], "declined", "")
        self.progress(device["id"], "bench")
        fut = self.client.submit(
            call,
            bench_on_device,
            device["id"],
            self.run_key(device["id"]),
            [a.artifact_id for a in arts],
            [a.info for a in arts],
            self.spec.options,
            workers=[address],
            resources={"edgerun-device": 1},
            pure=False,
        )
        return check_run(self.wait(device["id"], address, fut), device["id"])

    def on_device(self, device_id: str, address: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) run on the device (edgerun.lab.remote.call), its plain answer unwrapped."""
        fut = self.client.submit(call, fn, *args, workers=[address], pure=False)
        return unwrap(self.wait(device_id, address, fut), f"device {device_id}'s answer")

    def _rejoined(self, device_id: str, old: str) -> str | None:
        deadline = time.monotonic() + self.spec.rejoin_s
        while time.monotonic() < deadline and not self.cancelled.is_set():
            try:
                address = self.workers().get(device_id)
            except SchedulerLost as exc:
                self.scheduler_lost = exc
                return None
            if address and address != old:
                return address
            time.sleep(POLL_S)
        return None

    def device_job(self, device: dict[str, Any], results: ResultsFile) -> dict[str, Any]:
        """Ship and bench on one device (retried once after a disconnect and a rejoin); the
        run, complete or failed with the reason, is added to `results`."""
        address, attempts, reasons = device["address"], 0, []
        while True:
            attempts += 1
            self.attempts[device["id"]] = attempts
            self.seen[device["id"]] = time.monotonic()
            try:
                run = self._attempt(device, address)
                break
            except DeviceLost as exc:
                reasons.append(str(exc))
                rejoined = None if attempts > 1 else self._rejoined(device["id"], address)
                if rejoined is None:
                    run = self._failed(device, "failed", "; ".join(reasons))
                    break
                self.progress(device["id"], f"rejoined at {rejoined}: retrying once")
                address = rejoined
            except Cancelled as exc:
                run = self._failed(device, "cancelled", str(exc))
                break
            except SchedulerLost as exc:
                self.scheduler_lost = exc
                run = self._failed(device, "failed", exc.message)
                break
            except Exception as exc:  # a bench error on the device, a stall: that device fails
                run = self._failed(device, "failed", f"{type(exc).__name__}: {exc}")
                break
        run["lab"].update(attempts=attempts, earlier_failures=reasons[: attempts - 1])
        results.add(run)
        self.progress(device["id"], f"done: {run['lab']['status']}")
        return run

    def _failed(self, device: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
        infos = [a.info for a in self.spec.artifacts]
        run = failed_run(device, infos, self.spec.options["workload"], status, reason)
        run["lab"] = {"device": device["id"], "status": status, "reason": reason, "shipped": {}}
        return run

    # -- every device --------------------------------------------------------------------------

    def run(self, devices: list[dict[str, Any]], results: ResultsFile) -> list[dict[str, Any]]:
        """Run every device's job at once; return their runs. On KeyboardInterrupt every
        device is cancelled, the runs that ended are kept in `results`, and it is re-raised."""
        self.client.subscribe_topic(PROGRESS_TOPIC, self._event)
        pool = ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="edgerun-lab")
        jobs = [pool.submit(self.device_job, d, results) for d in devices]
        try:
            while not all(j.done() for j in jobs):
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self.cancel([d["id"] for d in devices])
            pool.shutdown(wait=True)
            raise
        finally:
            pool.shutdown(wait=True)
            with contextlib.suppress(Exception):  # the scheduler may be gone
                self.client.unsubscribe_topic(PROGRESS_TOPIC)
        return [j.result() for j in jobs]
