"""Power meters: one module per source, a sampling thread, and energy accounting.

Lean: no meter imports anything heavy at module level (NVML's bindings load on probe).
"""

from __future__ import annotations

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable, PowerSampler
from edgerun.power.registry import CHOICES, METERS, Selection, probe, select, survey

__all__ = [
    "CHOICES",
    "METERS",
    "Meter",
    "MeterError",
    "MeterInfo",
    "MeterUnavailable",
    "PowerSampler",
    "Selection",
    "probe",
    "select",
    "survey",
]
