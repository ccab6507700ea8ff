"""Every power meter on fake sysfs trees and recorded tool output."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.power import MeterError, MeterUnavailable, battery, command, jetson, rapl, rpi5
from tests.power_fakes import (
    DATA,
    battery_tree,
    deny_energy_counters,
    jetson_agx_orin_hwmon,
    jetson_nano_iio,
    jetson_orin_hwmon,
    rapl_tree,
)

ENERGY = "sys/class/powercap/intel-rapl:0/energy_uj"
DRAM = "sys/class/powercap/intel-rapl:0/intel-rapl:0:1/energy_uj"


# --- RAPL ---------------------------------------------------------------------------------
def test_rapl_sums_package_and_dram_and_ignores_core_and_mmio(tmp_path: Path) -> None:
    meter = rapl.probe(rapl_tree(tmp_path))
    assert [z.name for z in meter.zones] == ["package-0", "dram"]
    info = meter.describe()
    assert (info.scope, info.method, info.meter) == ("package", "counter", "rapl")
    assert meter.read() == 0.0  # joules since the probe's first read
    (tmp_path / ENERGY).write_text("3000000\n")  # +2 J
    (tmp_path / DRAM).write_text("750000\n")  # +0.25 J
    assert meter.read() == pytest.approx(2.25)


def test_rapl_unwraps_counter_overflow(tmp_path: Path) -> None:
    meter = rapl.probe(rapl_tree(tmp_path, package_uj=999_000, max_uj=1_000_000))
    (tmp_path / ENERGY).write_text("4000\n")  # wrapped: 1000 µJ to the top, then 4000
    assert meter.read() == pytest.approx(0.005)
    (tmp_path / ENERGY).write_text("6000\n")
    assert meter.read() == pytest.approx(0.007)


def test_rapl_root_only_counters_name_the_file_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rapl_tree(tmp_path)
    deny_energy_counters(monkeypatch)
    with pytest.raises(MeterUnavailable) as err:
        rapl.probe(tmp_path)
    assert err.value.message == f"/{ENERGY} is not readable"
    assert err.value.hint == (
        "RAPL counters are root-only since Linux 5.10: run as root or "
        "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`"
    )


def test_rapl_absent(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no powercap interface"):
        rapl.probe(tmp_path)
    (tmp_path / "sys/class/powercap").mkdir(parents=True)
    with pytest.raises(MeterUnavailable, match="no intel-rapl zones"):
        rapl.probe(tmp_path)


def test_rapl_counter_removed_mid_run(tmp_path: Path) -> None:
    meter = rapl.probe(rapl_tree(tmp_path))
    (tmp_path / ENERGY).unlink()
    with pytest.raises(MeterError, match="cannot read .*energy_uj"):
        meter.read()


# --- Jetson -------------------------------------------------------------------------------
def test_jetson_orin_hwmon_reads_vdd_in_only(tmp_path: Path) -> None:
    meter = jetson.probe(jetson_orin_hwmon(tmp_path), tegrastats=["false"])
    assert meter.read() == pytest.approx(6.0)  # 5000 mV x 1200 mA
    info = meter.describe()
    assert (info.scope, info.method) == ("module", "integrated")
    assert info.source == "INA3221 hwmon: VDD_IN"


def test_jetson_agx_orin_sums_rails(tmp_path: Path) -> None:
    meter = jetson.probe(jetson_agx_orin_hwmon(tmp_path))
    assert meter.read() == pytest.approx(4.8)
    assert meter.describe().scope == "rails"


def test_jetson_jetpack4_iio(tmp_path: Path) -> None:
    meter = jetson.probe(jetson_nano_iio(tmp_path))
    assert meter.read() == pytest.approx(1.859)
    assert meter.describe().source == "INA3221 iio: POM_5V_IN"


def test_jetson_rail_removed_mid_run(tmp_path: Path) -> None:
    meter = jetson.probe(jetson_orin_hwmon(tmp_path))
    next(tmp_path.rglob("curr1_input")).unlink()
    with pytest.raises(MeterError, match="cannot read rail VDD_IN"):
        meter.read()


def test_parse_tegrastats_recorded_lines() -> None:
    orin = (DATA / "tegrastats_orin_nano.txt").read_text().splitlines()
    assert jetson.parse_tegrastats(orin[1]) == {
        "VDD_IN": 9121,
        "VDD_CPU_GPU_CV": 3352,
        "VDD_SOC": 1831,
    }
    nano = (DATA / "tegrastats_nano_jp4.txt").read_text().splitlines()
    assert jetson.parse_tegrastats(nano[0]) == {
        "POM_5V_IN": 1859,
        "POM_5V_GPU": 0,
        "POM_5V_CPU": 248,
    }
    agx = jetson.parse_tegrastats((DATA / "tegrastats_agx_orin.txt").read_text())
    assert sorted(agx) == ["VDDQ_VDD2_1V8AO", "VDD_CPU_CV", "VDD_GPU_SOC", "VIN_SYS_5V0"]


def _replay(name: str, then_sleep: float) -> list[str]:
    """A command that prints a recorded tegrastats file, then lives `then_sleep` seconds."""
    code = (
        "import sys, time\n"
        f"for line in open({str(DATA / name)!r}): print(line, end='', flush=True)\n"
        f"time.sleep({then_sleep})\n"
    )
    return [sys.executable, "-c", code]


def test_jetson_tegrastats_fallback_and_exit_mid_run(tmp_path: Path) -> None:
    meter = jetson.probe(tmp_path, tegrastats=_replay("tegrastats_nano_jp4.txt", 1.0))
    try:
        assert isinstance(meter, jetson.TegrastatsMeter)
        deadline = time.monotonic() + 10
        while meter.latest.get("POM_5V_IN") != 4012 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert meter.read() == pytest.approx(4.012)  # the last line's POM_5V_IN, while running
        assert meter.describe().source == "tegrastats: POM_5V_IN"
        meter.proc.wait(timeout=10)  # tegrastats goes away
        with pytest.raises(MeterError, match="tegrastats exited with status 0"):
            meter.read()
    finally:
        meter.close()


def test_jetson_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jetson.shutil, "which", lambda _: None)
    with pytest.raises(MeterUnavailable, match="this is not an NVIDIA Jetson"):
        jetson.probe(tmp_path)


# --- Raspberry Pi 5 -----------------------------------------------------------------------
def test_rpi5_pairs_amps_with_volts_and_is_a_lower_bound() -> None:
    text = (DATA / "vcgencmd_pmic_read_adc.txt").read_text()
    rails = rpi5.parse_pmic_adc(text)
    assert len(rails) == 12  # EXT5V_V and BATT_V have no current line
    assert rails["VDD_CORE"] == pytest.approx(0.84423580 * 0.72)
    meter = rpi5.probe(runner=lambda: text)
    assert meter.read() == pytest.approx(1.566013, abs=1e-6)
    info = meter.describe()
    assert info.lower_bound and info.scope == "rails"


def test_rpi5_command_fails_mid_run() -> None:
    outputs = iter([(DATA / "vcgencmd_pmic_read_adc.txt").read_text(), "error=1 error_msg=..."])
    meter = rpi5.probe(runner=lambda: next(outputs))
    with pytest.raises(MeterError, match="no rail readings"):
        meter.read()


def test_rpi5_not_a_pi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpi5.shutil, "which", lambda _: None)
    with pytest.raises(MeterUnavailable, match="vcgencmd is not installed"):
        rpi5.probe()
    with pytest.raises(MeterUnavailable, match="Raspberry Pi 5 only"):
        rpi5.probe(runner=lambda: "")


def test_rpi5_real_runner_reports_a_failing_binary() -> None:
    with pytest.raises(MeterError, match="pmic_read_adc` failed"):
        rpi5.vcgencmd_runner("/nonexistent/vcgencmd")()


# --- Battery ------------------------------------------------------------------------------
def test_battery_power_now_and_current_times_voltage(tmp_path: Path) -> None:
    assert battery.probe(battery_tree(tmp_path / "a")).read() == pytest.approx(12.5)
    meter = battery.probe(battery_tree(tmp_path / "b", power_uw=None))
    assert meter.read() == pytest.approx(11.4)
    assert meter.describe().scope == "system"


def test_battery_must_be_discharging(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable) as err:
        battery.probe(battery_tree(tmp_path, status="Charging"))
    assert err.value.message == "the battery is not discharging (BAT0 Charging)"
    assert "unplug the charger" in str(err.value.hint)


def test_battery_charger_plugged_in_mid_run(tmp_path: Path) -> None:
    meter = battery.probe(battery_tree(tmp_path))
    (tmp_path / "sys/class/power_supply/BAT0/status").write_text("Charging\n")
    with pytest.raises(MeterError, match="BAT0 is no longer discharging"):
        meter.read()


def test_battery_absent(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no battery"):
        battery.probe(tmp_path)


# --- External command ---------------------------------------------------------------------
def test_command_meter_reads_watts(tmp_path: Path) -> None:
    meter = command.probe("echo 'power: 4.25 W'")
    assert meter.read() == pytest.approx(4.25)
    assert meter.describe().method == "integrated"


def test_command_meter_fails_mid_run(tmp_path: Path) -> None:
    flag = tmp_path / "meter-online"
    flag.touch()
    meter = command.probe(f"test -e {flag} && echo 3.5 || (echo 'meter unplugged' >&2; exit 3)")
    assert meter.read() == 3.5
    flag.unlink()
    with pytest.raises(MeterError, match="exited with status 3: meter unplugged"):
        meter.read()


def test_command_meter_rejects_non_numbers() -> None:
    with pytest.raises(MeterUnavailable, match="no number"):
        command.probe("echo watts")


@pytest.mark.parametrize(
    ("text", "watts"),
    [
        ("4.2", 4.2),
        ("4.2 W", 4.2),
        ("Power: 4.2W", 4.2),
        ("5000 mW", 5.0),  # read as 5000 W before
        ("5000000 uW", 5.0),
        ("5000000 µW", 5.0),
        ("0.005 kW", 5.0),
        ("5.1V 0.9A", 4.59),  # read as 0.9 W before
        ("5.1 V, 900 mA", 4.59),
        ("ch1 5.02V 0.91A 4.57W", 4.57),  # the power among other readings; not the 1 of ch1
        ("3.7 watts", 3.7),
        (".5", 0.5),
        ("0", 0.0),
    ],
)
def test_command_reading_units(text: str, watts: float) -> None:
    assert command.parse_reading(text) == pytest.approx(watts)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("4,2", "decimal comma"),  # read as 2 W before
        ("-5", "non-negative"),  # read as -5 W before
        ("-5 W", "non-negative"),
        ("4.2 W 3.1 W", "2 power readings"),
        ("4 2", "2 numbers without a unit"),
        ("5.1V", "exactly one current"),
        ("5.1V 0.9A 0.8A", "exactly one current"),
        ("4.2 mWh", "unknown unit 'mWh'"),
        ("1e999 W", "finite"),
        ("", "no number"),
    ],
)
def test_command_reading_refuses_what_it_would_guess(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        command.parse_reading(text)


@given(
    st.floats(min_value=0, max_value=1e4, allow_nan=False),
    st.sampled_from([("W", 1.0), ("mW", 1e-3), ("uW", 1e-6), ("kW", 1e3), ("", 1.0)]),
    st.sampled_from(["", " "]),
    st.sampled_from(["", "power: ", "P="]),
)
@settings(max_examples=200, deadline=None)
def test_command_reading_round_trips(
    value: float, unit: tuple[str, float], gap: str, label: str
) -> None:
    text = f"{label}{value!r}{gap if unit[0] else ''}{unit[0]}"
    assert command.parse_reading(text) == pytest.approx(value * unit[1], rel=1e-12)


def test_command_meter_names_a_misread_line() -> None:
    with pytest.raises(MeterUnavailable, match=r"printed '4,2\\n': a decimal comma"):
        command.probe("echo 4,2")
