"""The sampling thread, energy accounting, the --power registry, NVML on a fake module, and
`edgerun power`."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.power import Meter, MeterError, MeterInfo, PowerSampler, registry, select
from edgerun.power.account import EnergyAccount
from edgerun.power.registry import Selection
from tests.power_fakes import deny_energy_counters, rapl_tree

# the meters `auto` tries before it reaches RAPL (the registry's order)
BEFORE_RAPL = list(registry.METERS)[: list(registry.METERS).index("rapl")]


class Watts(Meter):
    """A power meter whose reading the test sets; fails after `fail_after` reads if given."""

    kind = "power"
    interval_s = 0.01

    def __init__(self, watts: float, fail_after: int | None = None) -> None:
        self.watts, self.fail_after, self.reads = watts, fail_after, 0

    def read(self) -> float:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise MeterError("fake meter unplugged")
        return self.watts

    def describe(self) -> MeterInfo:
        return MeterInfo("fake", "fake watts", "system", "integrated")


class Joules(Meter):
    """A counter at 3 W: cumulative joules = 3 x monotonic time."""

    kind = "counter"
    interval_s = 0.01

    def read(self) -> float:
        return 3.0 * time.monotonic()

    def describe(self) -> MeterInfo:
        return MeterInfo("fakec", "fake counter", "package", "counter")


@pytest.fixture
def no_real_meters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure no meter of the machine running the tests leaks in."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    from edgerun.power import jetson, rpi5

    monkeypatch.setattr(jetson.shutil, "which", lambda _: None)
    monkeypatch.setattr(rpi5.shutil, "which", lambda _: None)


def test_sampler_integrates_constant_power_with_the_trapezoid_rule() -> None:
    sampler = PowerSampler(Watts(5.0)).start()
    t0 = time.monotonic()
    time.sleep(0.1)
    t1 = time.monotonic()
    time.sleep(0.03)
    sampler.stop()
    joules, reason = sampler.energy_between(t0, t1)
    assert reason is None
    assert joules == pytest.approx(5.0 * (t1 - t0), rel=1e-6)
    assert len(sampler.times) >= 3


def test_sampler_counter_differences() -> None:
    """A counter meter: joules between two instants are the interpolated counter difference."""
    clock = iter([10.0, 10.0, 10.5, 10.5, 12.0, 12.0]).__next__  # before/after each read
    counts = iter([100.0, 101.5, 106.0])  # 3 W: 1.5 J over 0.5 s, 4.5 J over 1.5 s
    meter = Joules()
    meter.read = lambda: next(counts)  # type: ignore[method-assign]
    sampler = PowerSampler(meter, clock=clock)
    for _ in range(3):
        sampler.sample()
    assert sampler.times == [10.0, 10.5, 12.0]
    joules, reason = sampler.energy_between(10.25, 11.0)
    assert reason is None
    assert joules == pytest.approx(3.0 * 0.75)


def test_sampler_stamps_a_reading_at_the_middle_of_a_slow_read() -> None:
    clock = iter([5.0, 5.4]).__next__
    sampler = PowerSampler(Watts(1.0), clock=clock)
    sampler.sample()
    assert sampler.times == [5.2]


def test_sampler_counter_on_its_thread() -> None:
    sampler = PowerSampler(Joules()).start()
    t0 = time.monotonic()
    time.sleep(0.08)
    t1 = time.monotonic()
    time.sleep(0.03)
    sampler.stop()
    joules, reason = sampler.energy_between(t0, t1)
    assert reason is None and joules is not None
    # The thread and this test share two cores with whatever else runs: allow a few ms of
    # scheduling skew at each end, the exact arithmetic is checked with a scripted clock above.
    assert joules == pytest.approx(3.0 * (t1 - t0), abs=3.0 * 0.005)


def test_sampler_meter_disappears_mid_run() -> None:
    sampler = PowerSampler(Watts(4.0, fail_after=3), interval_s=10)
    for _ in range(3):
        sampler.sample()
        time.sleep(0.01)
    covered = (sampler.times[0], sampler.times[-1])
    sampler.sample()  # the 4th read fails
    assert sampler.error == "fake meter unplugged"
    joules, _ = sampler.energy_between(*covered)  # ended before the failure: still valid
    assert joules == pytest.approx(4.0 * (covered[1] - covered[0]), rel=1e-6)
    assert sampler.failed_at is not None
    joules, reason = sampler.energy_between(covered[0], sampler.failed_at + 0.01)
    assert joules is None
    assert reason == "the meter stopped working during the run: fake meter unplugged"


def test_sampler_outside_samples_is_not_guessed() -> None:
    sampler = PowerSampler(Watts(1.0))
    sampler.sample()
    joules, reason = sampler.energy_between(time.monotonic() + 1, time.monotonic() + 2)
    assert joules is None and reason == "the meter has no samples around this phase"


def test_account_idle_baseline_gross_net_and_per_token() -> None:
    meter = Watts(2.0)
    account = EnergyAccount(Selection(meter))
    account.measure_idle(0.05)
    assert account.idle_watts == pytest.approx(2.0)
    meter.watts = 7.0
    account.sampler.sample()  # type: ignore[union-attr]
    t_start = time.monotonic()
    time.sleep(0.02)
    t_first = time.monotonic()
    time.sleep(0.04)
    t_end = time.monotonic()
    block, reason = account.rep_energy(t_start, t_first, t_end, prompt=10, decoded=20)
    assert reason is None and block is not None
    pre, dec = block["prefill"], block["decode"]
    assert pre["joules"] == pytest.approx(7.0 * (t_first - t_start), rel=1e-6)
    assert pre["net_joules"] == pytest.approx(5.0 * (t_first - t_start), rel=1e-6)
    assert pre["avg_watts"] == pytest.approx(7.0)
    assert dec["j_per_token"] == pytest.approx(7.0 * (t_end - t_first) / 20, rel=1e-6)
    assert dec["net_j_per_token"] == pytest.approx(5.0 * (t_end - t_first) / 20, rel=1e-6)
    assert (block["meter"], block["scope"], block["method"]) == ("fake", "system", "integrated")
    assert account.header()["idle_watts"] == pytest.approx(2.0)


def test_account_without_meter_is_null_with_reason_and_estimate_is_labelled() -> None:
    none = EnergyAccount(
        Selection(None, "no power meter found on this machine", "see edgerun power")
    )
    assert none.rep_energy(0.0, 1.0, 2.0, 1, 1) == (None, "no power meter found on this machine")
    assert none.header()["available"] is False
    est = EnergyAccount(Selection(None, "turned off"), assume_watts=10.0)
    block, _ = est.rep_energy(0.0, 1.0, 3.0, prompt=100, decoded=40)
    assert block is not None
    assert block["method"] == "estimate"
    assert block["source"] == "assumed 10 W (--assume-watts): not measured"
    assert block["decode"]["joules"] == 20.0 and block["decode"]["j_per_token"] == 0.5
    assert block["decode"]["net_joules"] is None
    with pytest.raises(EdgerunError, match="together with a working power meter"):
        EnergyAccount(Selection(Watts(1.0)), assume_watts=5.0)


def test_select_auto_finds_rapl_on_a_fake_tree(tmp_path: Path, no_real_meters: None) -> None:
    sel = select("auto", root=rapl_tree(tmp_path))
    assert sel.meter is not None and sel.meter.describe().meter == "rapl"
    assert list(sel.tried or {}) == BEFORE_RAPL


def test_select_auto_without_meters_gives_reasons(tmp_path: Path, no_real_meters: None) -> None:
    sel = select("auto", root=tmp_path)
    assert sel.meter is None and sel.reason == "no power meter found on this machine"
    assert sorted(sel.tried or {}) == sorted(registry.METERS)
    assert "pynvml" in (sel.tried or {})["nvml"]


def test_select_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(EdgerunError, match="unknown power meter 'wattmeter'"):
        select("wattmeter", root=tmp_path)
    with pytest.raises(EdgerunError, match="power meter 'rapl' is unavailable: no powercap"):
        select("rapl", root=tmp_path)
    assert select("none").reason == "power measurement was turned off (--power none)"
    meter = select("cmd:'echo 2.5'").meter
    assert meter is not None and meter.read() == 2.5


def fake_pynvml(energy_supported: bool) -> types.ModuleType:
    """A stand-in for nvidia-ml-py: one GPU, energy counter in mJ, power in mW."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    state: dict[str, Any] = {"mj": 1_000_000, "mw": 61_500, "init": 0}
    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.state = state  # type: ignore[attr-defined]
    mod.nvmlInit = lambda: state.__setitem__("init", state["init"] + 1)  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: state.__setitem__("init", state["init"] - 1)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]

    def energy(handle: str) -> int:
        if not energy_supported:
            raise NVMLError("Not Supported")
        return int(state["mj"])

    def power(handle: str) -> int:
        if state["mw"] is None:
            raise NVMLError("GPU is lost")
        return int(state["mw"])

    mod.nvmlDeviceGetTotalEnergyConsumption = energy  # type: ignore[attr-defined]
    mod.nvmlDeviceGetPowerUsage = power  # type: ignore[attr-defined]
    return mod


def test_nvml_energy_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml(energy_supported=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = registry.probe("nvml")
    assert meter.kind == "counter" and meter.read() == 1000.0  # 1e6 mJ
    fake.state["mj"] += 2500  # type: ignore[attr-defined]
    assert meter.read() == 1002.5
    info = meter.describe()
    assert (info.scope, info.method) == ("gpu", "counter")
    assert info.source == "NVML total-energy counter: GPU0 NVIDIA H100 80GB HBM3"
    meter.close()
    assert fake.state["init"] == 0  # type: ignore[attr-defined]


def test_nvml_power_fallback_and_lost_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml(energy_supported=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = registry.probe("nvml")
    assert meter.kind == "power" and meter.read() == 61.5
    assert meter.describe().method == "integrated"
    fake.state["mw"] = None  # type: ignore[attr-defined]
    with pytest.raises(MeterError, match="NVML stopped answering: GPU is lost"):
        meter.read()


def test_cli_power_lists_meters_with_reasons(tmp_path: Path, no_real_meters: None) -> None:
    result = CliRunner().invoke(
        cli, ["power", "--root", str(rapl_tree(tmp_path)), "--seconds", "0"]
    )
    assert result.exit_code == 0, result.output
    # one line per registered meter, in the registry's order (spaces collapsed: the name column
    # is as wide as the longest name)
    lines = {line.split()[0]: " ".join(line.split()) for line in result.output.splitlines()}
    assert list(lines) == list(registry.METERS)
    assert lines["jetson"].startswith(
        "jetson unavailable: no INA3221 power monitor and no tegrastats"
    )
    assert lines["rapl"] == (
        "rapl 0.00 W RAPL powercap: package-0 (intel-rapl:0), dram (intel-rapl:0:1) "
        "[scope package, counter]"
    )
    assert lines["nvml"] == (
        "nvml unavailable: the Python package 'pynvml' is not installed "
        "(install the NVML bindings: pip install 'edgerun[nvidia]')"
    )
    assert lines["battery"] == (
        "battery unavailable: no battery under /sys/class/power_supply (this meter needs a battery)"
    )


def test_cli_power_nothing_found(tmp_path: Path, no_real_meters: None) -> None:
    result = CliRunner().invoke(cli, ["power", "--root", str(tmp_path), "--json"])
    assert result.exit_code == 0
    import json

    rows = json.loads(result.output)
    assert [r["meter"] for r in rows] == list(registry.METERS)
    assert not any(r["available"] for r in rows)


def test_select_named_meter_without_permission_says_which_file_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rapl_tree(tmp_path)
    deny_energy_counters(monkeypatch)
    with pytest.raises(EdgerunError) as err:
        select("rapl", root=tmp_path)
    assert str(err.value) == (
        "power meter 'rapl' is unavailable: /sys/class/powercap/intel-rapl:0/energy_uj is not "
        "readable (RAPL counters are root-only since Linux 5.10: run as root or "
        "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`)"
    )


def test_select_auto_tries_the_profiles_meter_first(tmp_path: Path, no_real_meters: None) -> None:
    marker = tmp_path / "ran"
    command = f"cmd:touch {marker}; echo 9"
    sel = select("auto", root=rapl_tree(tmp_path), preferred=command)
    assert sel.meter is not None and sel.meter.describe().meter == "rapl"
    assert (sel.tried or {})[command].startswith("not run: a command named by a profile file")
    assert not marker.exists()  # a profile's command never runs without being asked for
    sel = select("profile", root=rapl_tree(tmp_path), preferred=command)
    assert sel.meter is not None and sel.meter.describe().meter == "cmd" and marker.exists()
    sel = select("auto", root=rapl_tree(tmp_path), preferred="battery")
    assert sel.meter is not None and sel.meter.describe().meter == "rapl"
    assert list(sel.tried or {}) == ["battery", *BEFORE_RAPL]
