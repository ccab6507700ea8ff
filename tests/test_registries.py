"""Every name a registry holds has a test fixture here, so adding a meter, a backend, a format
family, a model family or a GGUF quirk without its fixture fails. (Device profiles: each needs
a fake machine, tests/test_detect.py::test_every_profile_has_a_fake_machine; model families:
tests/test_families.py::test_every_registered_family_has_a_tiny_checkpoint_of_its_kind.)"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgerun.power import battery, jetson, nvml, rapl, rpi5
from edgerun.power.base import Meter
from edgerun.power.registry import METERS
from tests.power_fakes import DATA, battery_tree, jetson_orin_hwmon, rapl_tree


def _nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Meter:
    from tests.test_power_sampler import fake_pynvml

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_supported=True))
    return nvml.probe()


# meter name -> a working meter of that kind on fake hardware
METER_FIXTURES: dict[str, Callable[[Path, pytest.MonkeyPatch], Meter]] = {
    "rapl": lambda root, mp: rapl.probe(rapl_tree(root)),
    "jetson": lambda root, mp: jetson.probe(jetson_orin_hwmon(root)),
    "rpi5": lambda root, mp: rpi5.probe(runner=lambda: (DATA / "vcgencmd_pmic_read_adc.txt").read_text()),
    "nvml": _nvml,
    "battery": lambda root, mp: battery.probe(battery_tree(root)),
}  # fmt: skip


def test_every_registered_meter_has_a_fixture() -> None:
    assert sorted(METERS) == sorted(METER_FIXTURES)


@pytest.mark.parametrize("name", sorted(METERS))
def test_each_meter_reads_its_fake_hardware(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meter = METER_FIXTURES[name](tmp_path, monkeypatch)
    assert meter.describe().meter == name
    assert meter.read() >= 0.0


def test_every_registered_backend_has_an_artifact_fixture() -> None:
    """tests/test_runtime_backends.py runs each backend on a tiny artifact of this format."""
    from edgerun.backends.registry import backend_names
    from tests.test_runtime_backends import BACKEND_ARTIFACTS

    assert sorted(backend_names()) == sorted(BACKEND_ARTIFACTS)


def test_every_format_family_is_in_the_family_matrix() -> None:
    from edgerun.exporters.families import FORMATS

    from edgerun.format_registry import FAMILY_MODULES

    assert sorted({fmt.split("-")[0] for fmt in FORMATS}) == sorted(FAMILY_MODULES)


def test_every_gguf_quirk_has_a_refused_and_an_accepted_checkpoint() -> None:
    """A quirk that refuses has a refused and an accepted config; one that fixes the
    converter's config has a config it fixes and one it leaves alone."""
    import importlib

    from edgerun.exporters.gguf.quirks import MODULES

    from tests.test_export_gguf import QUIRK_CHECKPOINTS, QUIRK_FIXES

    modules = {name: importlib.import_module(path) for name, path in MODULES.items()}
    assert sorted(n for n, m in modules.items() if hasattr(m, "check")) == sorted(QUIRK_CHECKPOINTS)
    assert sorted(n for n, m in modules.items() if hasattr(m, "fix")) == sorted(QUIRK_FIXES)
    assert all(hasattr(m, "check") or hasattr(m, "fix") for m in modules.values())
