"""Raspberry Pi 5: the PMIC's rail ADCs through ``vcgencmd pmic_read_adc``.

Output lines pair a current and a voltage per rail::

      VDD_CORE_A current(7)=0.84423580A
      VDD_CORE_V volt(15)=0.72000000V

Summing A x V over the rails gives the power behind the PMIC only: the USB-C input, the 5 V
peripherals and the PMIC's own losses are not seen, so the figure is a *lower bound* on board
power (labelled so in every result).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")

Runner = Callable[[], str]


def parse_pmic_adc(text: str) -> dict[str, float]:
    """{rail: watts} for every rail that has both a current (_A) and a voltage (_V) line."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    return {rail: amps[rail] * volts[rail] for rail in sorted(amps) if rail in volts}


def vcgencmd_runner(binary: str = "vcgencmd") -> Runner:
    """A callable that runs `vcgencmd pmic_read_adc` and returns its stdout."""

    def run() -> str:
        try:
            out = subprocess.run(
                [binary, "pmic_read_adc"], capture_output=True, text=True, timeout=5, check=True
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MeterError(f"`{binary} pmic_read_adc` failed: {exc}") from exc
        return out.stdout

    return run


class Rpi5Meter(Meter):
    """Sum of PMIC rail powers, sampled (vcgencmd takes a few ms per call)."""

    interval_s = 0.25

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.rails: list[str] = []

    def read(self) -> float:
        rails = parse_pmic_adc(self.runner())
        if not rails:
            raise MeterError("`vcgencmd pmic_read_adc` printed no rail readings")
        self.rails = self.rails or sorted(rails)
        return sum(rails.values())

    def describe(self) -> MeterInfo:
        return MeterInfo(
            "rpi5",
            f"vcgencmd pmic_read_adc: {len(self.rails)} PMIC rails (A x V)",
            "rails",
            "integrated",
            lower_bound=True,
            note="PMIC rails only: the USB-C input, 5 V peripherals and PMIC losses are not seen",
        )


def probe(runner: Runner | None = None) -> Rpi5Meter:
    """A Pi 5 PMIC meter; MeterUnavailable where vcgencmd or the PMIC ADC is missing."""
    if runner is None:
        if shutil.which("vcgencmd") is None:
            raise MeterUnavailable(
                "vcgencmd is not installed (this is not a Raspberry Pi)",
                "this meter works on a Raspberry Pi 5 with Raspberry Pi OS",
            )
        runner = vcgencmd_runner()
    meter = Rpi5Meter(runner)
    try:
        meter.read()
    except MeterError as exc:
        raise MeterUnavailable(
            f"{exc} (pmic_read_adc exists on the Raspberry Pi 5 only)",
            "update the firmware (`sudo rpi-eeprom-update -a`) on a Pi 5",
        ) from exc
    return meter
