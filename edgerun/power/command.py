"""An external meter through a user command: ``--power cmd:"COMMAND"``.

The command runs once per sample and prints the current power in watts (the last number on its
output), e.g. a script that queries a USB power meter or a smart plug.
"""

from __future__ import annotations

import re
import subprocess

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
EXAMPLE = "--power 'cmd:python read_meter.py' where the command prints e.g. 4.2"


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
        numbers = _NUMBER.findall(out.stdout)
        if not numbers:
            raise MeterError(f"power command `{self.command}` printed no number: {out.stdout!r}")
        return float(numbers[-1])

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
        raise MeterUnavailable(str(exc), f"the command must print watts, e.g. {EXAMPLE}") from exc
    return meter
