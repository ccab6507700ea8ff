"""The device fingerprint recorded with every result: what machine produced these numbers."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.device.resolve import Resolved

#: CPU flags that matter for inference kernels (x86 SIMD / AMX, Arm NEON dot-product / SVE / i8mm).
_SIMD_PREFIXES = (
    "avx",
    "sse4",
    "fma",
    "f16c",
    "amx",
    "asimd",
    "neon",
    "sve",
    "i8mm",
    "bf16",
    "dotprod",
    "vnni",
)


def _simd(flags: list[str]) -> list[str]:
    return sorted(f for f in flags if f.startswith(_SIMD_PREFIXES))


def fingerprint(profile: str | Resolved | None = None) -> dict[str, Any]:
    """CPU model, cores, SIMD flags, RAM, OS, kernel, accelerators and the detected (or given,
    or already resolved: edgerun.device.resolve) profile. Detection failures are recorded, never
    raised: a result must still be written."""
    import psutil

    data: dict[str, Any] = {
        "name": platform.node(),
        "arch": platform.machine(),
        "os": platform.system(),
        "os_release": _os_release(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": int(psutil.virtual_memory().total),
    }
    try:
        from edgerun.device.detect import machine_facts

        facts = machine_facts().to_dict()
        data.update(
            cpu_model=facts.get("cpu_model"),
            cpu_flags=_simd(facts.get("cpu_flags") or []),
            device_tree_model=facts.get("device_tree_model"),
            jetson_release=facts.get("jetson_release"),
            accelerators=facts.get("gpus") or [],
            ort_providers=facts.get("ort_providers") or [],
        )
    except Exception as exc:  # detection is another module's job; a failure is recorded
        data["facts_error"] = f"{type(exc).__name__}: {exc}"
    data["profile"] = _profile(profile)
    return data


def _profile(requested: str | Resolved | None) -> dict[str, Any]:
    from edgerun.device.resolve import resolve_profile

    try:
        resolved = resolve_profile(requested)
    except Exception as exc:
        name = requested if isinstance(requested, str) else None
        return {"id": name, "how": "unknown", "error": f"{type(exc).__name__}: {exc}"}
    p, found = resolved.profile, resolved.detection
    if p is None:
        return {"id": None, "how": "unknown", "error": resolved.reason}
    if found is None:
        return {"id": p.id, "how": "--profile", "power_meter": p.power_meter}
    return {"id": p.id, "how": "detected", "reasons": found.reasons, "power_meter": p.power_meter}


def _os_release() -> str | None:
    try:
        return str(platform.freedesktop_os_release().get("PRETTY_NAME"))
    except (OSError, AttributeError):
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of edgerun and every runtime library it may use (None: not installed)."""
    from edgerun.core.versions import RUNTIME, versions

    return versions(RUNTIME, missing=True)
