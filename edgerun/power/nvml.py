"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

Volta and newer expose a total-energy counter in millijoules
(nvmlDeviceGetTotalEnergyConsumption); older GPUs only report instantaneous board power in
milliwatts (nvmlDeviceGetPowerUsage), which the sampler integrates.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from edgerun.power.base import Meter, MeterError, MeterInfo, MeterUnavailable

INSTALL_HINT = "install the NVML bindings: pip install 'edgerun[nvidia]'"


def _pynvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise MeterUnavailable(
            "the Python package 'pynvml' is not installed", INSTALL_HINT
        ) from exc


class NvmlMeter(Meter):
    """Sum over every visible GPU of the energy counter (mJ) or of board power (mW)."""

    interval_s = 0.05

    def __init__(self, nvml: Any, handles: list[Any], names: list[str], counter: bool) -> None:
        self.nvml = nvml
        self.handles = handles
        self.names = names
        self.kind = "counter" if counter else "power"

    def read(self) -> float:
        try:
            if self.kind == "counter":
                mj = sum(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles)
                return mj / 1e3
            mw = sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles)
            return mw / 1e3
        except self.nvml.NVMLError as exc:
            raise MeterError(f"NVML stopped answering: {exc}") from exc

    def describe(self) -> MeterInfo:
        what = "total-energy counter" if self.kind == "counter" else "board power (sampled)"
        gpus = ", ".join(f"GPU{i} {n}" for i, n in enumerate(self.names))
        method = "counter" if self.kind == "counter" else "integrated"
        return MeterInfo("nvml", f"NVML {what}: {gpus}", "gpu", method)

    def close(self) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def probe() -> NvmlMeter:
    """An NVML meter over all GPUs; MeterUnavailable if pynvml, the driver or a GPU is missing."""
    nvml = _pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise MeterUnavailable(
            f"NVML could not start ({exc})", "install the NVIDIA driver (nvidia-smi must work)"
        ) from exc
    count = nvml.nvmlDeviceGetCount()
    if count == 0:
        nvml.nvmlShutdown()
        raise MeterUnavailable("NVML found no NVIDIA GPU", "this meter needs an NVIDIA GPU")
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    names = [_name(nvml.nvmlDeviceGetName(h)) for h in handles]
    counter = True
    try:
        for h in handles:
            nvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except nvml.NVMLError:  # pre-Volta: NVML_ERROR_NOT_SUPPORTED
        counter = False
    meter = NvmlMeter(nvml, handles, names, counter)
    try:
        meter.read()
    except MeterError as exc:
        meter.close()
        raise MeterUnavailable(str(exc), "check `nvidia-smi -q -d POWER`") from exc
    return meter


def _name(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
