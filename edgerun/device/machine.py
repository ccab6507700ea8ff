"""Facts about a machine that device profiles are matched against: CPU architecture, OS, CPU
model and flags (/proc/cpuinfo), device-tree model, Jetson release file, NVIDIA GPUs (nvidia-smi
or /proc/driver/nvidia), ONNX Runtime providers, physical cores and RAM.

``root`` points :func:`machine_facts` at a fake file tree, which is how the tests describe real
devices (tests/data/machines/); on "/" it also asks platform, psutil, nvidia-smi, sysctl (macOS),
the registry (Windows) and onnxruntime.
"""

from __future__ import annotations

import dataclasses
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (CPU implementer, CPU part) from arm64 /proc/cpuinfo -> core name, for boards whose cpuinfo
# has no "model name" line. Values from the Linux kernel's arch/arm64/include/asm/cputype.h.
ARM_CORES = {
    ("0x41", "0xd03"): "ARM Cortex-A53",  # Raspberry Pi 3, many SBCs
    ("0x41", "0xd05"): "ARM Cortex-A55",  # little cores of Snapdragon 8xx
    ("0x41", "0xd08"): "ARM Cortex-A72",  # Raspberry Pi 4
    ("0x41", "0xd0b"): "ARM Cortex-A76",  # Raspberry Pi 5
    ("0x41", "0xd0c"): "ARM Neoverse-N1",  # Ampere Altra, AWS Graviton2
    ("0x41", "0xd0d"): "ARM Cortex-A77",  # Snapdragon 865
    ("0x41", "0xd40"): "ARM Neoverse-V1",  # AWS Graviton3
    ("0x41", "0xd42"): "ARM Cortex-A78AE",  # Jetson Orin
    ("0x41", "0xd4f"): "ARM Neoverse-V2",  # NVIDIA Grace, AWS Graviton4
    ("0x51", "0x001"): "Qualcomm Oryon",  # Snapdragon X Elite
    ("0x61", "0x022"): "Apple M1",  # Asahi Linux
}


@dataclass(frozen=True)
class MachineFacts:
    """The facts about one machine that profiles are matched against."""

    arch: str
    os: str
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    device_tree_model: str | None = None
    jetson_release: str | None = None
    gpus: list[str] = field(default_factory=list)
    ort_providers: list[str] = field(default_factory=list)
    physical_cores: int | None = None
    ram_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, flags sorted."""
        data = dataclasses.asdict(self)
        data["cpu_flags"] = sorted(self.cpu_flags)
        return data


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpuinfo_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(CPU model, flags) from /proc/cpuinfo text: x86 "model name" and "flags"; arm64
    "Hardware" (older vendor kernels) and "Features". Model is "" when the file names none."""
    fields = _cpuinfo_fields(text)
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or ""
    if model.lower().startswith("armv"):  # 32-bit ARM: "ARMv7 Processor rev 3 (v7l)" names no chip
        model = ""
    return model, flags


def cpu_flags(root: Path = Path("/")) -> frozenset[str] | None:
    """The CPU flags of root/proc/cpuinfo; None where it names none (macOS, Windows, or no
    file), so that "unknown" is never read as "lacks every feature"."""
    flags = parse_cpuinfo(_read(root / "proc/cpuinfo") or "")[1]
    return flags or None


def arm_core(text: str) -> str:
    """The core named by the first "CPU implementer" / "CPU part" pair of arm64 /proc/cpuinfo."""
    fields = _cpuinfo_fields(text)
    return ARM_CORES.get((fields.get("cpu implementer", ""), fields.get("cpu part", "")), "")


def parse_jetson_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> 'R36.3.0' (None if it does not parse)."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def _soc_model(root: Path) -> str:
    """Qualcomm socinfo: /sys/devices/soc0/family ('Snapdragon') + machine ('SM8250')."""
    family = (_read(root / "sys/devices/soc0/family") or "").strip()
    machine = (_read(root / "sys/devices/soc0/machine") or "").strip()
    return f"{family} {machine}".strip()


def _device_tree_model(root: Path) -> str | None:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        text = _read(root / rel)
        if text:
            return text.strip("\x00\n ")
    return None


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_cpu_name(system: str) -> str:
    """The CPU brand string where /proc/cpuinfo does not exist: macOS sysctl, Windows registry."""
    if system == "Darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip()
    if system == "Windows":
        try:
            import winreg

            key = r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
            with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key) as handle:  # type: ignore[attr-defined]
                return str(winreg.QueryValueEx(handle, "ProcessorNameString")[0]).strip()  # type: ignore[attr-defined]
        except (ImportError, OSError):
            return ""
    return ""


def _read_gpus(root: Path, live: bool) -> list[str]:
    """NVIDIA GPU names: `nvidia-smi -L` on the live machine, else /proc/driver/nvidia/gpus."""
    if live:
        names = re.findall(r"^GPU \d+: (.+?)(?: \(UUID:.*)?$", _run(["nvidia-smi", "-L"]), re.M)
        if names:
            return names
    found = []
    for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
        match = re.search(r"^Model:\s*(.+)$", _read(info) or "", re.M)
        if match:
            found.append(match.group(1).strip())
    return found


def _ort_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:  # a broken onnxruntime install must not break detection
        return []


def machine_facts(root: Path = Path("/"), **overrides: Any) -> MachineFacts:
    """Facts about the machine whose files lie under `root` ("/" is this machine: then commands
    such as nvidia-smi run and psutil, platform and onnxruntime are asked too). `overrides`
    replace any field, e.g. arch/os for a fake tree of another kind of machine."""
    root = Path(root)
    live = root == Path("/")
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    model, flags = parse_cpuinfo(cpuinfo)
    model = model or _soc_model(root) or arm_core(cpuinfo)
    system = platform.system() if live else ""
    if live and system in ("Darwin", "Windows"):
        model = _os_cpu_name(system) or model
    release = _read(root / "etc/nv_tegra_release")
    facts: dict[str, Any] = {
        "arch": platform.machine() if live else "",
        "os": system,
        "cpu_model": model,
        "cpu_flags": flags,
        "device_tree_model": _device_tree_model(root),
        "jetson_release": parse_jetson_release(release) if release else None,
        "gpus": _read_gpus(root, live),
        "ort_providers": _ort_providers() if live else [],
    }
    if live:
        import psutil

        facts["physical_cores"] = psutil.cpu_count(logical=False)
        from edgerun.device.cgroup import ram_bytes

        facts["ram_bytes"] = ram_bytes()  # a container's limit, where one caps the host's RAM
    facts.update(overrides)
    if isinstance(facts["cpu_flags"], (list, set)):
        facts["cpu_flags"] = frozenset(facts["cpu_flags"])
    return MachineFacts(**facts)
