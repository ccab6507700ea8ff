"""Fake sysfs trees for the power-meter tests (written under a tmp root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data" / "power"


def write_tree(root: Path, files: dict[str, object]) -> Path:
    """Create `files` ({relative path: content}) under `root`; return root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{content}\n")
    return root


def rapl_tree(
    root: Path, package_uj: int = 1_000_000, dram_uj: int = 500_000, max_uj: int = 262_143_328_850
) -> Path:
    """One package zone with core and dram sub-zones, plus an mmio duplicate to be ignored."""
    p = "sys/class/powercap/intel-rapl:0"
    return write_tree(
        root,
        {
            f"{p}/name": "package-0",
            f"{p}/energy_uj": package_uj,
            f"{p}/max_energy_range_uj": max_uj,
            f"{p}/intel-rapl:0:0/name": "core",
            f"{p}/intel-rapl:0:0/energy_uj": 7,
            f"{p}/intel-rapl:0:0/max_energy_range_uj": max_uj,
            f"{p}/intel-rapl:0:1/name": "dram",
            f"{p}/intel-rapl:0:1/energy_uj": dram_uj,
            f"{p}/intel-rapl:0:1/max_energy_range_uj": max_uj,
            "sys/class/powercap/intel-rapl-mmio:0/name": "package-0",
            "sys/class/powercap/intel-rapl-mmio:0/energy_uj": 99,
            "sys/class/powercap/intel-rapl-mmio:0/max_energy_range_uj": max_uj,
        },
    )


def jetson_orin_hwmon(root: Path) -> Path:
    """Orin Nano: VDD_IN 5.0 V x 1.2 A, two more rails, and the current-less sum channel."""
    h = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    return write_tree(
        root,
        {
            f"{h}/in1_label": "VDD_IN",
            f"{h}/in1_input": 5000,
            f"{h}/curr1_input": 1200,
            f"{h}/in2_label": "VDD_CPU_GPU_CV",
            f"{h}/in2_input": 5008,
            f"{h}/curr2_input": 96,
            f"{h}/in3_label": "VDD_SOC",
            f"{h}/in3_input": 5000,
            f"{h}/curr3_input": 287,
            f"{h}/in7_label": "sum of shunt voltages",
            f"{h}/in7_input": 2,
        },
    )


def jetson_agx_orin_hwmon(root: Path) -> Path:
    """AGX Orin: no module-total rail, so the rails are summed."""
    h = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    return write_tree(
        root,
        {
            f"{h}/in1_label": "VDD_GPU_SOC",
            f"{h}/in1_input": 4000,
            f"{h}/curr1_input": 1000,
            f"{h}/in2_label": "VDD_CPU_CV",
            f"{h}/in2_input": 4000,
            f"{h}/curr2_input": 200,
        },
    )


def jetson_nano_iio(root: Path) -> Path:
    """JetPack 4 Nano: ina3221x iio device with power in mW."""
    d = "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    return write_tree(
        root,
        {
            f"{d}/rail_name_0": "POM_5V_IN",
            f"{d}/in_power0_input": 1859,
            f"{d}/rail_name_1": "POM_5V_GPU",
            f"{d}/in_power1_input": 0,
            f"{d}/rail_name_2": "POM_5V_CPU",
            f"{d}/in_power2_input": 248,
        },
    )


def battery_tree(
    root: Path,
    status: str = "Discharging",
    power_uw: int | None = 12_500_000,
    current_ua: int = 1_000_000,
    voltage_uv: int = 11_400_000,
) -> Path:
    b = "sys/class/power_supply/BAT0"
    files: dict[str, object] = {
        f"{b}/type": "Battery",
        f"{b}/status": status,
        f"{b}/current_now": current_ua,
        f"{b}/voltage_now": voltage_uv,
        "sys/class/power_supply/AC/type": "Mains",
        "sys/class/power_supply/AC/online": 0,
    }
    if power_uw is not None:
        files[f"{b}/power_now"] = power_uw
    return write_tree(root, files)


def deny_energy_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every RAPL energy_uj read fail as it does for non-root users since Linux 5.10."""
    real = Path.read_text

    def deny(self: Path, *a: Any, **k: Any) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
