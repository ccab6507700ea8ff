"""Laptop / Android battery through ``/sys/class/power_supply/BAT*`` (only while discharging).

``power_now`` is in µW; batteries without it report ``current_now`` (µA) and ``voltage_now``
(µV). While the charger is connected the battery's draw says nothing about the system's, so the
meter refuses to run then, and fails mid-run if the charger is plugged in.
"""

from __future__ import annotations

from pathlib import Path

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

SUPPLY = Path("sys/class/power_supply")
UNPLUG_HINT = "unplug the charger and run on battery, or pick another meter with --power"


def _read(path: Path) -> str:
    return path.read_text().strip()


class BatteryMeter(Meter):
    """Discharge power of one or more batteries, summed (system scope)."""

    interval_s = 0.5  # the fuel gauge updates slowly; faster sampling only repeats values

    def __init__(self, batteries: list[Path]) -> None:
        self.batteries = batteries

    def _watts(self, bat: Path) -> float:
        status = _read(bat / "status")
        if status != "Discharging":
            raise MeterError(f"{bat.name} is no longer discharging (status {status})")
        if (bat / "power_now").is_file():
            return abs(int(_read(bat / "power_now"))) / 1e6
        current = abs(int(_read(bat / "current_now")))
        return current * int(_read(bat / "voltage_now")) / 1e12

    def read(self) -> float:
        try:
            return sum(self._watts(b) for b in self.batteries)
        except (OSError, ValueError) as exc:
            raise MeterError(f"cannot read the battery: {exc}") from exc

    def describe(self) -> MeterInfo:
        names = ", ".join(b.name for b in self.batteries)
        return MeterInfo("battery", f"battery discharge ({names})", "system", "integrated")


def probe(root: Path = Path("/")) -> BatteryMeter:
    """A battery meter; MeterUnavailable when there is no battery or it is not discharging."""
    bats = [
        b
        for b in sorted((root / SUPPLY).glob("*"))
        if (b / "type").is_file() and _read(b / "type") == "Battery"
    ]
    if not bats:
        raise MeterUnavailable(f"no battery under {'/' / SUPPLY}", "this meter needs a battery")
    statuses = {b.name: _read(b / "status") if (b / "status").is_file() else "?" for b in bats}
    if any(s != "Discharging" for s in statuses.values()):
        shown = ", ".join(f"{k} {v}" for k, v in statuses.items())
        raise MeterUnavailable(f"the battery is not discharging ({shown})", UNPLUG_HINT)
    meter = BatteryMeter(bats)
    try:
        meter.read()
    except MeterError as exc:
        raise MeterUnavailable(str(exc), "the battery lacks power_now / current_now") from exc
    return meter
