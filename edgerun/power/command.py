"""An external meter through a user command: ``--power cmd:"COMMAND"``.

The command runs once per sample and prints the current power, e.g. a script that queries a USB
power meter or a smart plug. What it may print (`parse_reading`):

    4.2            one bare number: watts
    4.2 W          a number with a power unit: kW, W, mW, uW (or µW); `Power: 4.2W` too
    5.1V 0.9A      one voltage and one current (V or mV, A or mA): their product
    5.02V 0.91A 4.57W   a power among other readings: the power

Anything else is refused rather than guessed: a negative or non-finite value, two powers, two bare
numbers, a decimal comma (`4,2`), a voltage without a current.
"""

from __future__ import annotations

import math
import re
import subprocess

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

# A number standing on its own (not the 1 of `ch1`), with the word right after it (its unit).
_READING = re.compile(r"(?<![\w.])([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\W\d_]*)")
_DECIMAL_COMMA = re.compile(r"\d,\d")
_UNITS = {
    **{p + q: (q, f) for p, f in (("k", 1e3), ("", 1.0), ("m", 1e-3)) for q in "WVA"},
    **{p + "W": ("W", 1e-6) for p in "uµμ"},
    "watts": ("W", 1.0),
}
EXAMPLE = "--power 'cmd:python read_meter.py' where the command prints e.g. 4.2 W"


def parse_reading(text: str) -> float:
    """Watts from one line of a meter command's output (formats: the module docstring).

    Raises ValueError naming what is ambiguous or wrong; never guesses.
    """
    if _DECIMAL_COMMA.search(text):
        raise ValueError("a decimal comma is ambiguous (4,2 could be 4.2 or 42); print 4.2")
    found: dict[str, list[float]] = {"W": [], "V": [], "A": [], "": []}
    for number, word in _READING.findall(text):
        if word and word not in _UNITS and word.lower() not in _UNITS:
            raise ValueError(f"unknown unit {word!r} after {number} (use W, mW, uW, V, A, mA)")
        kind, factor = _UNITS.get(word, _UNITS.get(word.lower(), ("", 1.0)))
        found[kind].append(float(number) * factor)
    watts, volts, amps, bare = found["W"], found["V"], found["A"], found[""]
    if len(watts) > 1:
        raise ValueError(f"{len(watts)} power readings; print one")
    if watts:
        value = watts[0]
    elif volts or amps:
        if len(volts) != 1 or len(amps) != 1:
            raise ValueError("a voltage needs exactly one current beside it (e.g. 5.1V 0.9A)")
        value = volts[0] * amps[0]
    elif len(bare) == 1:
        value = bare[0]
    else:
        raise ValueError("no number" if not bare else f"{len(bare)} numbers without a unit")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"power {value} W is not a finite, non-negative number")
    return value


class CommandMeter(Meter):
    """Runs `command` through the shell each sample; its output is watts."""

    interval_s = 1.0

    def __init__(self, command: str, timeout_s: float = 10.0) -> None:
        self.command = command
        self.timeout_s = timeout_s

    def read(self) -> float:
        try:
            out = subprocess.run(
                self.command, shell=True, capture_output=True, text=True, timeout=self.timeout_s
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise MeterError(f"power command `{self.command}` failed: {exc}") from exc
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or [""])[-1]
            raise MeterError(
                f"power command `{self.command}` exited with status {out.returncode}: {tail}"
            )
        lines = out.stdout.strip().splitlines()
        try:
            return parse_reading(lines[-1] if lines else "")
        except ValueError as exc:
            shown = out.stdout[:200]
            raise MeterError(f"power command `{self.command}` printed {shown!r}: {exc}") from exc

    def describe(self) -> MeterInfo:
        return MeterInfo(
            "cmd",
            f"external meter: `{self.command}`",
            "system",
            "integrated",
            note="scope as wide as what the external meter is wired to (usually the wall socket)",
        )


def probe(command: str) -> CommandMeter:
    """A command meter, checked by running the command once."""
    if not command.strip():
        raise MeterUnavailable("the power command is empty", f"use {EXAMPLE}")
    meter = CommandMeter(command)
    try:
        meter.read()
    except MeterError as exc:
        raise MeterUnavailable(
            str(exc), f"the command must print one power reading, e.g. {EXAMPLE}"
        ) from exc
    return meter
