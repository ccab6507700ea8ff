"""The Meter interface, the sampling thread that turns readings into energy, and its errors.

A meter is either a *counter* (it reports cumulative joules, like RAPL or NVML's total-energy
counter) or a *power* meter (it reports instantaneous watts, like INA3221 rails or a battery).
The :class:`PowerSampler` reads either kind at the meter's rate on a background thread and keeps one
cumulative-energy series: counters as read (unwrapped by the meter), power samples integrated with
the trapezoid rule. Energy between two instants is then a difference of that series,
interpolated linearly between samples, so phases shorter than the sampling interval are
approximations at the meter's resolution.
"""

from __future__ import annotations

import bisect
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError

#: Where a meter's number comes from, coarsest to finest.
SCOPES = ("system", "module", "rails", "package", "gpu")


class MeterUnavailable(EdgerunError):
    """A meter cannot be used here; `message` says why, `hint` how to enable it."""


class MeterError(Exception):
    """A meter that worked stopped working (file removed, command failed, charger plugged in)."""


@dataclass
class MeterInfo:
    """What a meter measures: joined into every energy block so numbers never lose their label."""

    meter: str  # a name of edgerun.power.registry.METERS, or "cmd"
    source: str  # human-readable: which files / device / command
    scope: str  # one of SCOPES
    method: str  # "counter" or "integrated"
    lower_bound: bool = False  # True where the meter misses part of the system (Pi 5 PMIC rails)
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "source": self.source,
            "scope": self.scope,
            "method": self.method,
            "lower_bound": self.lower_bound,
            "note": self.note,
        }


class Meter(ABC):
    """One power source. Subclasses set `kind` and implement `read()` and `describe()`."""

    #: "counter": read() returns cumulative joules; "power": read() returns watts.
    kind: str = "power"
    #: Seconds between samples on the sampling thread.
    interval_s: float = 0.1

    @abstractmethod
    def read(self) -> float:
        """Joules so far (counter meters) or watts now (power meters); raise MeterError."""

    @abstractmethod
    def describe(self) -> MeterInfo:
        """Name, source, scope and method of this meter."""

    def close(self) -> None:  # noqa: B027 - optional hook, most meters hold nothing
        """Release whatever the meter holds (a library handle, a child process)."""
        return None


class PowerSampler:
    """Reads a meter on a background thread and answers "how many joules between t0 and t1".

    Times are ``time.monotonic()`` values, which on Linux are CLOCK_MONOTONIC and so comparable
    across processes: the bench worker reports phase boundaries, the parent integrates here.
    """

    def __init__(
        self,
        meter: Meter,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meter = meter
        self.clock = clock
        self.interval_s = interval_s if interval_s is not None else meter.interval_s
        self.times: list[float] = []
        self.energy: list[float] = []  # cumulative joules at each time
        self.error: str | None = None
        self.failed_at: float | None = None
        self._last_watts: float | None = None
        self._lock = threading.Lock()  # one reader at a time: counters keep unwrap state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one reading now and append it to the series (or record the failure)."""
        with self._lock:
            if self.error is not None:
                return
            before = self.clock()
            try:
                value = self.meter.read()
            except (MeterError, OSError) as exc:
                self.error = str(exc)
                self.failed_at = self.clock()
                return
            # A reading belongs to the middle of the read: a slow meter (a subprocess, an NVML
            # call) would otherwise be stamped late by half its own latency.
            now = 0.5 * (before + self.clock())
            if self.meter.kind == "counter":
                self.energy.append(value)
            elif not self.energy:
                self.energy.append(0.0)
            else:
                dt = now - self.times[-1]
                prev = self._last_watts if self._last_watts is not None else value
                self.energy.append(self.energy[-1] + 0.5 * (prev + value) * dt)
            self._last_watts = value
            self.times.append(now)

    def _loop(self) -> None:
        while not self._stop.is_set() and self.error is None:
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> PowerSampler:
        """Start the sampling thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edgerun-power", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample, stop the thread and close the meter."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()
        self.meter.close()

    def _at(self, t: float) -> float | None:
        """Cumulative joules at time t, interpolated; None outside the sampled span."""
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return self.energy[i]
        if i == 0 or i == len(self.times):
            return None
        t0, t1 = self.times[i - 1], self.times[i]
        e0, e1 = self.energy[i - 1], self.energy[i]
        return e0 + (e1 - e0) * (t - t0) / (t1 - t0)

    def energy_between(self, t0: float, t1: float) -> tuple[float | None, str | None]:
        """(joules, None) between two monotonic instants, or (None, reason) if not covered."""
        with self._lock:
            if self.failed_at is not None and self.failed_at <= t1:
                return None, f"the meter stopped working during the run: {self.error}"
            a, b = self._at(t0), self._at(t1)
        if (a is None or b is None) and self.error is not None:
            return None, f"the meter stopped working during the run: {self.error}"
        if a is None or b is None:
            return None, "the meter has no samples around this phase"
        return b - a, None

    def average_watts(self, t0: float, t1: float) -> tuple[float | None, str | None]:
        """(mean watts, None) over [t0, t1], or (None, reason)."""
        joules, reason = self.energy_between(t0, t1)
        if joules is None or t1 <= t0:
            return None, reason or "empty interval"
        return joules / (t1 - t0), None
