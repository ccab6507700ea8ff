"""Profiles state the CPU features their choices assume (requires_cpu_features), the fake devices
of tests/data/machines have them, and `edgerun run` warns in one line on a CPU that lacks them.

The evidence behind the ARM profiles comes from the emulated arm64 lane (tests/arm/lane.sh):
without the dot-product instructions (Cortex-A53, A72 = Raspberry Pi 4) ONNX Runtime's int4
MatMulNBits at accuracy level 4 computes in fp32, exactly as at level 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.backends.select import cpu_feature_warnings
from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.device import machine
from edgerun.device.profile import get_profile, list_profiles, parse_profile
from tests.runtime_helpers import export_artifact
from tests.test_detect import MACHINES, MACHINES_DIR, fake_machine

ARM = ("aarch64", "arm64", "ARM64")
ARM_MACHINES = [m for m in MACHINES if fake_machine(m)[0].arch in ARM]
MINIMAL = """
id = "x"
name = "X"
description = "x"
{line}
[match]
arch = ["aarch64"]
[[backends]]
name = "onnxruntime"
"""


ARM_ONLY = [p.id for p in list_profiles() if set(p.match.arch) <= {*ARM, "armv7l"}]


@pytest.mark.parametrize("profile_id", ARM_ONLY)
def test_every_arm_profile_states_the_cpu_features_it_assumes(profile_id: str) -> None:
    """ARM-only profiles; one that also matches x86 (nvidia-desktop-gpu) cannot name ARM flags."""
    assert "asimd" in get_profile(profile_id).requires_cpu_features


@pytest.mark.parametrize("name", ARM_MACHINES)
def test_each_fake_arm_device_has_what_its_profile_requires(name: str) -> None:
    facts, expected = fake_machine(name)
    profile = get_profile(expected)
    if facts.os == "Darwin":  # macOS has no /proc/cpuinfo: nothing to check, nothing warned
        assert not facts.cpu_flags
        return
    assert profile.missing_cpu_features(facts.cpu_flags) == []


@pytest.mark.parametrize("name", ARM_MACHINES)
def test_no_profile_asks_its_device_for_int8_kernels_the_cpu_lacks(name: str) -> None:
    """accuracy_level 4 (int8 activations) needs dot products on ARM; without them ONNX Runtime
    computes in fp32, so a level-4 export is validated on x86 with kernels the device never runs
    (the Raspberry Pi 4 profile did this)."""
    facts, expected = fake_machine(name)
    level = get_profile(expected).export.get("accuracy_level")
    if level == 4 and facts.cpu_flags:
        assert "asimddp" in facts.cpu_flags, f"{expected} sets accuracy_level 4"


def test_raspberry_pi_4_exports_with_fp32_compute() -> None:
    profile = get_profile("raspberry-pi-4")
    assert profile.export["accuracy_level"] == 1
    assert "asimddp" not in profile.requires_cpu_features


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('requires_cpu_features = "asimddp"', "expected an array of strings, got string"),
        ('requires_cpu_features = ["asimd dp"]', "'asimd dp' is not a CPU flag"),
        ('requires_cpu_features = ["ASIMDDP"]', "'ASIMDDP' is not a CPU flag"),
    ],
)
def test_requires_cpu_features_is_validated(line: str, message: str) -> None:
    with pytest.raises(EdgerunError) as err:
        parse_profile(MINIMAL.format(line=line), "x.toml")
    assert "x.toml, line 5: requires_cpu_features" in err.value.message
    assert message in err.value.message


def test_warning_names_what_the_machine_lacks() -> None:
    pi4, pi5 = MACHINES_DIR / "raspberry-pi-4" / "root", MACHINES_DIR / "raspberry-pi-5" / "root"
    profile = get_profile("raspberry-pi-5")
    (warning,) = cpu_feature_warnings(profile, pi4)
    assert warning.startswith("this CPU lacks asimddp, which profile 'raspberry-pi-5' assumes")
    assert cpu_feature_warnings(profile, pi5) == []
    assert cpu_feature_warnings(get_profile("raspberry-pi-4"), pi4) == []
    # flags that cannot be read (macOS, Windows) are unknown, not missing
    assert cpu_feature_warnings(profile, MACHINES_DIR / "apple-m2-pro" / "root") == []
    assert cpu_feature_warnings(None, pi4) == []


def test_run_warns_once_on_a_cpu_without_the_profiles_features(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = export_artifact(tiny_llama, "onnx-fp32", tmp_path / "ort")
    pi4 = MACHINES_DIR / "raspberry-pi-4" / "root"
    real = machine.cpu_flags
    monkeypatch.setattr(machine, "cpu_flags", lambda root=None: real(pi4))  # this host as a Pi 4
    args = ["run", str(artifact), "Hi", "-n", "2", "--ignore-eos", "--profile"]
    result = CliRunner().invoke(cli, [*args, "raspberry-pi-5"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "lacks asimddp, which profile 'raspberry-pi-5'" in warnings[0]
    result = CliRunner().invoke(cli, [*args, "raspberry-pi-4"])
    assert result.exit_code == 0, result.output
    assert "lacks" not in result.stderr
