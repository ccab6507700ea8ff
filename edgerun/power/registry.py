"""The meter registry behind ``--power``: `auto`, `none`, `profile`, ``cmd:"..."`` and every name
in METERS (CHOICES spells them out for help and errors)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.power.base import Meter, MeterUnavailable

#: Every meter, one line each: name -> (module, whether its probe takes the filesystem root).
#: `auto` tries them in this order, the most specific whole-device meter first.
METERS: dict[str, tuple[str, bool]] = {
    "jetson": ("edgerun.power.jetson", True),  # module total (VDD_IN / POM_5V_IN)
    "rpi5": ("edgerun.power.rpi5", False),  # PMIC rails, lower bound
    "rapl": ("edgerun.power.rapl", True),  # x86 package + DRAM counters
    "nvml": ("edgerun.power.nvml", False),  # NVIDIA GPU energy counter
    "battery": ("edgerun.power.battery", True),  # laptop / phone on battery
}
CHOICES = "auto, none, profile, " + ", ".join(METERS) + ', cmd:"COMMAND"'


@dataclass
class Selection:
    """The outcome of --power: a meter, or None with the reason(s) and how to enable one."""

    meter: Meter | None
    reason: str | None = None
    hint: str | None = None
    tried: dict[str, str] | None = None


def probe(name: str, root: Path = Path("/")) -> Meter:
    """Open meter `name` (a registry name or ``cmd:COMMAND``); raise MeterUnavailable."""
    if name.startswith("cmd:"):
        from edgerun.power.command import probe as probe_cmd

        return probe_cmd(name[4:].strip().strip("'\""))
    if name not in METERS:
        raise EdgerunError(f"unknown power meter '{name}'", f"choose one of: {CHOICES}")
    module_name, takes_root = METERS[name]
    module: Any = importlib.import_module(module_name)
    meter: Meter = module.probe(root) if takes_root else module.probe()
    return meter


def _why(exc: MeterUnavailable) -> str:
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def select(spec: str = "auto", root: Path = Path("/"), preferred: str | None = None) -> Selection:
    """Resolve a --power value. An explicitly named meter that is unavailable is an error;
    `auto` returns the first meter that works (the profile's `preferred` meter first) or the
    reasons. A ``cmd:`` meter named by the profile is never run by `auto`, only by
    ``--power profile`` or the same ``--power cmd:...`` on the command line."""
    if spec == "none":
        return Selection(None, "power measurement was turned off (--power none)")
    if spec == "profile":  # the user asked on the command line for what the profile names
        if not preferred or preferred == "auto":
            raise EdgerunError(
                "--power profile: the device profile names no power meter", f"use one of: {CHOICES}"
            )
        spec = preferred
    if spec != "auto":
        try:
            return Selection(probe(spec, root))
        except MeterUnavailable as exc:
            raise EdgerunError(
                f"power meter '{spec}' is unavailable: {exc.message}", exc.hint
            ) from exc
    first = [preferred] if preferred in METERS else []
    order = first + [m for m in METERS if m != preferred]
    tried: dict[str, str] = {}
    if preferred and preferred.startswith("cmd:"):
        # A profile file may come from anyone: its command runs only when asked for by name.
        tried[preferred] = (
            "not run: a command named by a profile file runs only on request"
            f" (--power profile, or --power '{preferred}')"
        )
    for name in order:
        try:
            return Selection(probe(name, root), tried=tried)
        except MeterUnavailable as exc:
            tried[name] = _why(exc)
    return Selection(
        None,
        "no power meter found on this machine",
        'see `edgerun power` for why each meter is unavailable; --power cmd:"..." reads an '
        "external meter and --assume-watts W gives a labelled estimate",
        tried,
    )


def survey(
    root: Path = Path("/"), seconds: float = 0.5, commands: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every registered meter (and `commands` as cmd: meters): available or not with the
    reason, and a live reading (counters: average watts over `seconds`)."""
    import time

    rows: list[dict[str, Any]] = []
    for name in list(METERS) + [f"cmd:{c}" for c in commands or []]:
        try:
            meter = probe(name, root)
        except MeterUnavailable as exc:
            rows.append(
                {"meter": name, "available": False, "reason": exc.message, "hint": exc.hint}
            )
            continue
        try:
            first = meter.read()
            t0 = time.monotonic()
            time.sleep(seconds)
            second = meter.read()
            watts = (
                (second - first) / (time.monotonic() - t0) if meter.kind == "counter" else second
            )
            rows.append(
                {"meter": name, "available": True, "watts": watts, **meter.describe().to_json()}
            )
        except Exception as exc:  # a meter that fails while being read is reported, not raised
            rows.append(
                {
                    "meter": name,
                    "available": False,
                    "reason": f"reading failed: {exc}",
                    "hint": None,
                }
            )
        finally:
            meter.close()
    return rows
