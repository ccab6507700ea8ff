"""Intel / AMD RAPL through Linux powercap: cumulative µJ counters per package (and DRAM).

Layout (``/sys/class/powercap``)::

    intel-rapl:0/name               package-0   (psys on some laptops: the whole platform)
    intel-rapl:0/energy_uj          counter, wraps to 0 after max_energy_range_uj
    intel-rapl:0/max_energy_range_uj
    intel-rapl:0/intel-rapl:0:0/    sub-zones: core, uncore, dram (dram is outside the package)

Since Linux 5.10 (CVE-2020-8694, "Platypus") energy_uj is readable by root only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

POWERCAP = Path("sys/class/powercap")
PERMISSION_HINT = (
    "RAPL counters are root-only since Linux 5.10: run as root or "
    "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`"
)


@dataclass
class Zone:
    """One powercap zone: its name, counter file and wrap range (µJ)."""

    name: str
    energy_path: Path
    max_range_uj: int
    last_uj: int = -1
    total_uj: int = 0

    def advance(self, raw: int) -> None:
        """Add the increase since the last read, unwrapping one counter overflow."""
        if self.last_uj >= 0:
            delta = raw - self.last_uj
            if delta < 0:  # wrapped past max_energy_range_uj back to zero
                delta += self.max_range_uj
            self.total_uj += delta
        self.last_uj = raw


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _zones(root: Path) -> list[Zone]:
    """Package zones plus their DRAM sub-zones; psys alone when it is the only zone."""
    base = root / POWERCAP
    picked: list[Zone] = []
    psys: list[Zone] = []
    for zdir in sorted(base.glob("intel-rapl:*")):
        candidates = [zdir] + sorted(zdir.glob("intel-rapl:*:*"))
        for sub in candidates:
            name_file = sub / "name"
            if not name_file.is_file():
                continue
            name = name_file.read_text().strip()
            is_top = sub == zdir
            if not (is_top or name == "dram"):
                continue  # core / uncore are inside the package already
            zone = Zone(name, sub / "energy_uj", _read_int(sub / "max_energy_range_uj"))
            (psys if name == "psys" else picked).append(zone)
    return picked or psys


class RaplMeter(Meter):
    """Sum of package (+ DRAM) energy counters; `psys` when the platform offers only that."""

    kind = "counter"
    interval_s = 0.05

    def __init__(self, zones: list[Zone]) -> None:
        self.zones = zones

    def read(self) -> float:
        for zone in self.zones:
            try:
                zone.advance(_read_int(zone.energy_path))
            except PermissionError as exc:
                raise MeterError(f"cannot read {zone.energy_path}: {PERMISSION_HINT}") from exc
            except (OSError, ValueError) as exc:
                raise MeterError(f"cannot read {zone.energy_path}: {exc}") from exc
        return sum(z.total_uj for z in self.zones) / 1e6

    def describe(self) -> MeterInfo:
        names = [z.name for z in self.zones]
        scope = "system" if names == ["psys"] else "package"
        where = ", ".join(f"{z.name} ({z.energy_path.parent.name})" for z in self.zones)
        return MeterInfo("rapl", f"RAPL powercap: {where}", scope, "counter")


def probe(root: Path = Path("/")) -> RaplMeter:
    """A RAPL meter for this machine; MeterUnavailable with the reason and the fix otherwise."""
    base = root / POWERCAP
    if not base.is_dir():
        raise MeterUnavailable(
            f"no powercap interface ({'/' / POWERCAP} missing)",
            "RAPL needs Linux on an Intel or AMD x86 CPU with the intel_rapl driver loaded "
            "(`sudo modprobe intel_rapl_msr`)",
        )
    try:
        zones = _zones(root)
    except (OSError, ValueError) as exc:
        raise MeterUnavailable(f"cannot read RAPL zones under {base}: {exc}") from exc
    if not zones:
        raise MeterUnavailable(
            f"no intel-rapl zones under {'/' / POWERCAP}",
            "load the driver with `sudo modprobe intel_rapl_msr` (bare metal x86 only)",
        )
    meter = RaplMeter(zones)
    try:
        meter.read()
    except MeterError as exc:
        denied = next((z.energy_path for z in zones if not _readable(z.energy_path)), None)
        if denied is not None:
            raise MeterUnavailable(
                f"{'/' / denied.relative_to(root)} is not readable", PERMISSION_HINT
            ) from exc
        raise MeterUnavailable(str(exc)) from exc
    return meter


def _readable(path: Path) -> bool:
    try:
        path.read_text()
    except PermissionError:
        return False
    except OSError:
        return True
    return True
