"""Energy accounting for a benchmark: idle baseline, then gross / net joules per phase.

Every number carries its label (source, scope, method). Without a meter the energy is null
with the reason; ``--assume-watts W`` gives an estimate that says it is one.
"""

from __future__ import annotations

import time
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.power.base import PowerSampler
from edgerun.power.registry import Selection


class EnergyAccount:
    """Owns the sampler for one benchmark run and turns phase timestamps into energy blocks."""

    def __init__(self, selection: Selection, assume_watts: float | None = None) -> None:
        if assume_watts is not None and selection.meter is not None:
            raise EdgerunError(
                "--assume-watts was given together with a working power meter",
                "drop --assume-watts to measure, or add --power none to estimate",
            )
        if assume_watts is not None and assume_watts <= 0:
            raise EdgerunError(f"--assume-watts must be positive, got {assume_watts}")
        self.selection = selection
        self.assume_watts = assume_watts
        self.sampler = PowerSampler(selection.meter) if selection.meter is not None else None
        self.info = selection.meter.describe().to_json() if selection.meter is not None else None
        self.idle_watts: float | None = None
        self.idle_seconds = 0.0
        self.idle_reason: str | None = None

    def start(self) -> None:
        """Start sampling (no-op without a meter)."""
        if self.sampler is not None:
            self.sampler.start()

    def measure_idle(self, seconds: float) -> None:
        """Sample `seconds` of idle before the workload: the baseline subtracted for net joules."""
        if self.sampler is None or seconds <= 0:
            self.idle_reason = "no idle baseline (--idle-seconds 0)" if self.sampler else None
            return
        self.sampler.sample()
        t0 = self.sampler.times[-1] if self.sampler.times else time.monotonic()
        time.sleep(seconds)
        self.sampler.sample()
        t1 = self.sampler.times[-1] if self.sampler.times else time.monotonic()
        self.idle_watts, self.idle_reason = self.sampler.average_watts(t0, t1)
        self.idle_seconds = seconds

    def stop(self) -> None:
        """Stop the sampler and release the meter."""
        if self.sampler is not None:
            self.sampler.stop()

    def header(self) -> dict[str, Any]:
        """The run-level power block recorded once in a result."""
        if self.assume_watts is not None:
            return {
                "available": False,
                "estimate": True,
                "meter": "estimate",
                "source": f"assumed {self.assume_watts:g} W (--assume-watts): not measured",
                "scope": "system",
                "method": "estimate",
                "reason": self.selection.reason,
                "idle_watts": None,
            }
        if self.info is None:
            return {
                "available": False,
                "estimate": False,
                "reason": self.selection.reason,
                "hint": self.selection.hint,
                "tried": self.selection.tried,
            }
        return {
            "available": True,
            "estimate": False,
            **self.info,
            "idle_watts": self.idle_watts,
            "idle_seconds": self.idle_seconds,
            "idle_reason": self.idle_reason,
            "error": self.sampler.error if self.sampler else None,
        }

    def _phase(self, t0: float, t1: float, tokens: int) -> dict[str, Any]:
        dt = t1 - t0
        if self.assume_watts is not None:
            gross: float | None = self.assume_watts * dt
            reason = None
        else:
            assert self.sampler is not None
            gross, reason = self.sampler.energy_between(t0, t1)
        if gross is None:
            return {"joules": None, "reason": reason}
        net = gross - self.idle_watts * dt if self.idle_watts is not None else None
        return {
            "joules": gross,
            "net_joules": net,
            "avg_watts": gross / dt if dt > 0 else None,
            "j_per_token": gross / tokens if tokens else None,
            "net_j_per_token": net / tokens if (net is not None and tokens) else None,
        }

    def rep_energy(
        self, t_start: float, t_first: float, t_end: float, prompt: int, decoded: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(energy block, None) for one generation, or (None, reason) without a meter."""
        if self.sampler is None and self.assume_watts is None:
            return None, self.selection.reason
        if self.sampler is not None:
            self.sampler.sample()  # a reading after t_end, so the phase is covered
        label = {
            k: v for k, v in self.header().items() if k in ("meter", "source", "scope", "method")
        }
        if self.info is not None:
            label["lower_bound"] = self.info["lower_bound"]
        return {
            **label,
            "prefill": self._phase(t_start, t_first, prompt),
            "decode": self._phase(t_first, t_end, decoded),
            "total": self._phase(t_start, t_end, prompt + decoded),
        }, None


def energy_for(power_spec: str, assume_watts: float | None, preferred: str | None) -> EnergyAccount:
    """The EnergyAccount `edgerun bench --power SPEC [--assume-watts W]` uses: the profile's
    `preferred` meter first under auto; an estimate only with --assume-watts and no meter."""
    from edgerun.power.registry import select

    if assume_watts is not None and power_spec == "auto":
        power_spec = "none"
    selection = select(power_spec, preferred=preferred)
    if assume_watts is not None and selection.meter is None:
        selection.reason = f"estimated at {assume_watts:g} W on request (--assume-watts)"
    return EnergyAccount(selection, assume_watts)
