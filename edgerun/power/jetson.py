"""NVIDIA Jetson on-board INA3221 power monitors.

Three ways in, tried in order:

* hwmon (JetPack 5/6, Orin and Xavier)::

      /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon*/in1_label   VDD_IN
                                                       in1_input   bus voltage, mV
                                                       curr1_input current, mA
* iio (JetPack 4, Nano / TX2 / Xavier)::

      /sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0       POM_5V_IN
                                                       in_power0_input   mW
* ``tegrastats`` (any JetPack), whose lines end in ``RAIL cur/avg`` pairs, e.g.
  ``VDD_IN 5033mW/5033mW`` (JetPack 5+) or ``POM_5V_IN 1859/1859`` (JetPack 4).

VDD_IN (Orin, Xavier NX) and POM_5V_IN (Nano, TX2) measure the whole module's input; where
neither exists (AGX Orin) the rails are summed and labelled as such.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
_TEGRA_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?!\w)")


def parse_tegrastats(line: str) -> dict[str, int]:
    """{rail: current milliwatts} from one tegrastats line (JetPack 4 and 5+ formats)."""
    return {m.group(1): int(m.group(2)) for m in _TEGRA_RAIL.finditer(line)}


def _pick(rails: Mapping[str, object]) -> tuple[list[str], str]:
    """The rails to add up and the scope they represent."""
    for total in TOTAL_RAILS:
        if total in rails:
            return [total], "module"
    return sorted(rails), "rails"


class SysfsRailsMeter(Meter):
    """Rails read from INA3221 sysfs files: (voltage mV, current mA) pairs or power mW."""

    interval_s = 0.1

    def __init__(self, rails: dict[str, tuple[Path, ...]], source: str) -> None:
        self.names, self.scope = _pick(rails)
        self.rails = {name: rails[name] for name in self.names}
        self.source = source

    def read(self) -> float:
        watts = 0.0
        for name, files in self.rails.items():
            try:
                values = [int(f.read_text().strip()) for f in files]
            except (OSError, ValueError) as exc:
                raise MeterError(f"cannot read rail {name} ({files[0]}): {exc}") from exc
            watts += values[0] * values[1] / 1e6 if len(values) == 2 else values[0] / 1e3
        return watts

    def describe(self) -> MeterInfo:
        return MeterInfo(
            "jetson", f"{self.source}: {' + '.join(self.names)}", self.scope, "integrated"
        )


def _hwmon_rails(root: Path) -> dict[str, tuple[Path, ...]]:
    rails: dict[str, tuple[Path, ...]] = {}
    for hwmon in sorted(root.glob(HWMON_GLOB)):
        for label in sorted(hwmon.glob("in*_label")):
            channel = label.name[2:].split("_")[0]
            volt, curr = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
            if volt.is_file() and curr.is_file():  # "sum of shunt voltages" has no current
                rails[label.read_text().strip()] = (volt, curr)
    return rails


def _iio_rails(root: Path) -> dict[str, tuple[Path, ...]]:
    rails: dict[str, tuple[Path, ...]] = {}
    for dev in sorted(root.glob(IIO_GLOB)):
        for name_file in sorted(dev.glob("rail_name_*")):
            power = dev / f"in_power{name_file.name.rsplit('_', 1)[1]}_input"
            if power.is_file():
                rails[name_file.read_text().strip()] = (power,)
    return rails


class TegrastatsMeter(Meter):
    """Reads the rails from a running ``tegrastats --interval MS`` (JetPack without sysfs access)."""

    interval_s = 0.1

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self.latest: dict[str, int] = {}
        self.names: list[str] = []
        self.scope = "module"
        self._got = threading.Event()
        threading.Thread(target=self._pump, name="edgerun-tegrastats", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            rails = parse_tegrastats(line)
            if rails:
                self.latest = rails
                self._got.set()

    def wait_first(self, timeout: float) -> bool:
        """True once a line with rails has arrived."""
        return self._got.wait(timeout)

    def read(self) -> float:
        if self.proc.poll() is not None:
            raise MeterError(f"tegrastats exited with status {self.proc.returncode}")
        if not self.names:
            self.names, self.scope = _pick(self.latest)
        try:
            return sum(self.latest[n] for n in self.names) / 1e3
        except KeyError as exc:
            raise MeterError(f"tegrastats stopped reporting rail {exc}") from exc

    def describe(self) -> MeterInfo:
        rails = " + ".join(self.names or _pick(self.latest)[0])
        return MeterInfo("jetson", f"tegrastats: {rails}", self.scope, "integrated")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def probe(root: Path = Path("/"), tegrastats: list[str] | None = None) -> Meter:
    """The best Jetson meter here: hwmon, else JetPack 4 iio, else tegrastats."""
    for finder, label in ((_hwmon_rails, "INA3221 hwmon"), (_iio_rails, "INA3221 iio")):
        rails = finder(root)
        if rails:
            meter = SysfsRailsMeter(rails, label)
            try:
                meter.read()
            except MeterError as exc:
                raise MeterUnavailable(
                    str(exc), "run as root or make the INA3221 files readable"
                ) from exc
            return meter
    command = tegrastats or (
        ["tegrastats", "--interval", "100"] if shutil.which("tegrastats") else None
    )
    if command is None:
        raise MeterUnavailable(
            "no INA3221 power monitor and no tegrastats (this is not an NVIDIA Jetson)",
            "this meter works on Jetson modules only",
        )
    meter2 = TegrastatsMeter(command)
    if not meter2.wait_first(timeout=3.0):
        meter2.close()
        raise MeterUnavailable(
            f"`{' '.join(command)}` printed no power rails", "run tegrastats as root"
        )
    return meter2
