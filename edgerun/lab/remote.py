"""What runs on a device, inside a Dask task: may it run an artifact, and the bench itself.

The bench is edgerun.bench.run, the same call as `edgerun bench`, on the copies in
the device's content store (edgerun.lab.store). Each progress step is published to the lab host
(a Dask event topic) and checks the run's cancel flag, so Ctrl-C on the host, a timeout or a
lost host stop the device between two measured repetitions.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from edgerun.core.errors import EdgerunError

PROGRESS_TOPIC = "edgerun-lab-progress"
MB = 1 << 20
#: Artifact family -> the backends (profile names, Python modules) that can run it.
FAMILY_BACKENDS = {
    "onnx": {"onnxruntime": "onnxruntime", "genai": "onnxruntime_genai"},
    "gguf": {"llamacpp": "llama_cpp"},
}


def call(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run `fn(*args)` on this device and answer in plain data, as the lab host accepts it
    (edgerun.lab.guard.unwrap): ``{"value": ...}`` (a path as its string), or ``{"error",
    "hint"}`` for an EdgerunError or any other exception (type and first line)."""
    try:
        value = fn(*args)
    except EdgerunError as exc:
        return {"error": exc.message, "hint": exc.hint}
    except Exception as exc:  # the host shows one line; the device's log keeps the rest
        first = (str(exc).splitlines() or [""])[0]
        return {"error": f"{type(exc).__name__}: {first}"[:500], "hint": None}
    return {"value": str(value) if isinstance(value, PurePath) else value}


def cancel_event_name(run_id: str, device_id: str) -> str:
    """The Dask Event a lab run sets to stop its work on one device."""
    return f"edgerun-lab-cancel-{run_id}-{device_id}"


def decline_reason(device_id: str, info: dict[str, Any], profile_id: str | None) -> str | None:
    """Why this device will not run the artifact described by `info` (harness.describe_artifact)
    under profile `profile_id` (default: its own), or None when it can: no backend in its profile
    for the artifact's family, none of those installed, or weights over its memory budget."""
    from edgerun.backends.providers import memory_budget_bytes
    from edgerun.device.profile import get_profile
    from edgerun.lab.device import advertise

    ad = advertise(device_id)
    profile = get_profile(profile_id or ad["profile"])
    family = str(info.get("family"))
    backends = FAMILY_BACKENDS.get(family)
    if backends is None:
        return f"unsupported format {info.get('format')}: no backend runs family {family!r}"
    listed = [b.name for b in profile.backends if b.name in backends]
    if not listed:
        return f"profile {profile.id} lists no backend for {family} ({', '.join(backends)})"
    if not any(importlib.util.find_spec(backends[name]) for name in listed):
        return f"none of {', '.join(listed)} is installed on this device"
    budget = memory_budget_bytes(profile, ad.get("ram_bytes"))
    size = int(info.get("size_bytes") or 0)
    if size > budget:
        return (
            f"its {size / MB:.1f} MiB of weights exceed the memory budget of {budget / MB:.1f} "
            f"MiB (profile {profile.id})"
        )
    return None


def _step(device_id: str, run_id: str) -> Any:
    from distributed import Event, get_worker

    worker = get_worker()
    cancel = Event(cancel_event_name(run_id, device_id))

    def step(message: str) -> None:
        worker.log_event(PROGRESS_TOPIC, {"device": device_id, "run": run_id, "message": message})
        if cancel.is_set():
            raise EdgerunError("cancelled by the lab host", "nothing of this run was measured")

    return step


def bench_on_device(
    device_id: str,
    run_id: str,
    artifact_ids: list[str],
    infos: list[dict[str, Any]],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Run the `edgerun bench` workload on stored artifacts; return one results run.

    `options`: workload (Workload fields; profile None means this device's profile), power,
    assume_watts, idle_seconds, loader, and fidelity (also score each artifact against the
    fidelity reference it ships: edgerun.exporters.fidelity_check.fidelity_summary)."""
    from pathlib import Path

    from edgerun.bench import run
    from edgerun.lab import store
    from edgerun.lab.device import advertise

    ad = advertise(device_id)
    paths = [store.artifact_path(a) for a in artifact_ids]
    if any(p is None for p in paths):
        raise EdgerunError("an artifact left this device's store before its bench", store.HINT)
    workload = {**options["workload"]}
    workload["profile"] = workload.get("profile") or ad["profile"]
    step = _step(device_id, run_id)
    local = [Path(str(p)) for p in paths]
    body = run(
        local,
        **workload,
        power=options["power"],
        assume_watts=options.get("assume_watts"),
        idle_seconds=options["idle_seconds"],
        loader=options["loader"],
        progress=step,
        device=ad["fingerprint"],
        libraries=ad["installed"],  # never the staged skew versions
    )
    for entry, info, path in zip(body["artifacts"], infos, local, strict=True):
        entry["device_path"], entry["path"] = entry["path"], info["path"]
        if options.get("fidelity"):
            from edgerun.exporters.fidelity_check import fidelity_summary

            step(f"fidelity {info['name']}")
            entry["fidelity"] = fidelity_summary(path, workload["profile"], workload.get("threads"))
    return body
