"""What a lab worker advertises about its device, and version skew between devices.

A worker describes the machine it runs on with edgerun.bench.device.fingerprint and
edgerun.device.detect. Two knobs exist only to simulate a lab on one host (tests, the README's sample,
benchmarks/lab_overhead.py) and are never needed on real devices:

- ``EDGERUN_LAB_MACHINE`` (``edgerun lab worker --machine``, hidden) names a machine-facts
  directory like those in tests/data/machines (``root/`` with /proc files, ``machine.toml`` with
  MachineFacts fields): the worker poses as that machine for detection and the decline check.
- ``EDGERUN_LAB_LIBRARIES`` (a JSON object of strings) overrides the advertised library versions,
  so a test can stage version skew.

Neither can pass for a real device fact: the numbers are measured on this host with its real
libraries, the results' ``device`` block says ``posing`` (the posed directory, the overridden
versions, and the CPU, cores, RAM and OS the numbers were really measured on), its
``cpu_model`` reads "posing as ...", and its ``name`` (the device column of `edgerun compare`)
is "ID (posing)".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

MACHINE_ENV = "EDGERUN_LAB_MACHINE"
LIBRARIES_ENV = "EDGERUN_LAB_LIBRARIES"
#: Libraries whose versions change the numbers: a device with another one is not comparable.
SKEW_LIBRARIES = ("edgerun", "onnxruntime", "onnxruntime-genai", "llama-cpp-python")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def posed_facts() -> Any:
    """MachineFacts of the machine named by $EDGERUN_LAB_MACHINE, or None (this machine)."""
    where = os.environ.get(MACHINE_ENV)
    if not where:
        return None
    from edgerun.device.machine import machine_facts

    spec_path = Path(where) / "machine.toml"
    try:
        spec = tomllib.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise EdgerunError(
            f"{MACHINE_ENV}: cannot read {spec_path}: {exc}",
            "point it at a machine-facts directory (root/ and machine.toml)",
        ) from exc
    spec.pop("expected", None)
    try:
        return machine_facts(Path(where) / "root", **spec)
    except TypeError as exc:
        raise EdgerunError(f"{spec_path}: {exc}", "use MachineFacts field names") from exc


def library_override() -> dict[str, str]:
    """The versions $EDGERUN_LAB_LIBRARIES stages (empty when unset); EdgerunError unless it is
    a small JSON object of strings."""
    text = os.environ.get(LIBRARIES_ENV)
    if not text:
        return {}
    try:
        data = json.loads(text) if len(text) <= 4096 else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise EdgerunError(
            f"{LIBRARIES_ENV} is not a JSON object of version strings (4 KiB at most)",
            f'e.g. {LIBRARIES_ENV}=\'{{"edgerun": "0.0.9"}}\' (a test aid; unset it on devices)',
        )
    return data


def _posing(machine: str | None, override: dict[str, str]) -> dict[str, Any]:
    """The `posing` record: what was simulated, and this host's facts the numbers come from."""
    from edgerun.bench.device import fingerprint

    real = fingerprint()
    keep = ("cpu_model", "arch", "os", "physical_cores", "logical_cores", "ram_bytes")
    return {
        "machine": machine,
        "libraries": override or None,
        "measured_on": {"name": real.get("name"), **{k: real.get(k) for k in keep}},
    }


def device_fingerprint(device_id: str) -> dict[str, Any]:
    """The results' `device` block for this worker: fingerprint() of this machine, or of the
    posed machine's facts and detected profile; `name` is the lab device id ("ID (posing)" when
    posing or staging library versions)."""
    from edgerun.bench.device import _simd, fingerprint

    facts = posed_facts()
    override = library_override()
    if facts is None:
        data = fingerprint()
    else:
        from edgerun.device.detect import detect

        found = detect(facts)
        data = fingerprint(found.profile.id)
        data["profile"].update(how="detected", reasons=found.reasons)
        data.update(
            arch=facts.arch,
            os=facts.os,
            cpu_model=f"posing as {facts.cpu_model or 'an unknown CPU'}",
            cpu_flags=_simd(sorted(facts.cpu_flags)),
            device_tree_model=facts.device_tree_model,
            jetson_release=facts.jetson_release,
            accelerators=list(facts.gpus),
        )
        for key in ("physical_cores", "ram_bytes"):
            if getattr(facts, key) is not None:
                data[key] = getattr(facts, key)
    data["name"] = device_id
    if facts is not None or override:
        data["posing"] = _posing(os.environ.get(MACHINE_ENV), override)
        data["name"] = f"{device_id} (posing)"  # what `edgerun compare` shows beside its numbers
    return data


_cache: dict[str, dict[str, Any]] = {}


def advertise(device_id: str) -> dict[str, Any]:
    """What `edgerun lab devices` shows for this worker: id, profile, CPU, cores, memory, OS,
    accelerators and library versions (computed once per process). `libraries` is what the
    device advertises (for the skew check); `installed` is what really runs (for results)."""
    if device_id not in _cache:
        from edgerun.bench.device import library_versions

        fp = device_fingerprint(device_id)
        installed = dict(library_versions())
        _cache[device_id] = {
            "id": device_id,
            "profile": (fp.get("profile") or {}).get("id"),
            "cpu": fp.get("cpu_model"),
            "arch": fp.get("arch"),
            "cores": fp.get("physical_cores") or fp.get("logical_cores"),
            "ram_bytes": fp.get("ram_bytes"),
            "os": fp.get("os"),
            "accelerators": fp.get("accelerators") or [],
            "libraries": {**installed, **library_override()},
            "installed": installed,
            "posing": fp.get("posing") is not None,
            "fingerprint": fp,
        }
    return _cache[device_id]


def version_skew(devices: list[dict[str, Any]], host: dict[str, Any]) -> list[str]:
    """Warnings for version skew: a device whose edgerun or backend versions differ from most
    devices' (its numbers are not comparable with theirs), and an edgerun on this host that
    differs from the devices' (results are written by another version than measured them)."""
    from collections import Counter

    common = {
        name: Counter(str((d.get("libraries") or {}).get(name)) for d in devices).most_common(1)
        for name in SKEW_LIBRARIES
    }
    warnings = []
    for dev in devices:
        theirs = dev.get("libraries") or {}
        diffs = [
            f"{name} {theirs.get(name) or 'absent'} (most devices: {common[name][0][0]})"
            for name in SKEW_LIBRARIES
            if str(theirs.get(name)) != common[name][0][0]
        ]
        if diffs:
            warnings.append(f"version skew on {dev['id']}: {', '.join(diffs)}")
    if devices and str(host.get("edgerun")) != common["edgerun"][0][0]:
        warnings.append(
            f"version skew: this host has edgerun {host.get('edgerun')}, "
            f"the devices {common['edgerun'][0][0]}"
        )
    return warnings
