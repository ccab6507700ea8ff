"""Machine facts and profile detection, on fake file trees of real devices (tests/data/machines)
and on this machine."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.device.detect import (
    MachineFacts,
    detect,
    machine_facts,
    parse_cpuinfo,
    parse_jetson_release,
)
from edgerun.device.profile import list_profiles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MACHINES_DIR = Path(__file__).parent / "data" / "machines"
MACHINES = sorted(p.name for p in MACHINES_DIR.iterdir() if (p / "machine.toml").is_file())
runner = CliRunner()


def fake_machine(name: str, **extra: Any) -> tuple[MachineFacts, str]:
    """Facts of tests/data/machines/NAME (its root tree + machine.toml) and the expected id."""
    spec = tomllib.loads((MACHINES_DIR / name / "machine.toml").read_text())
    expected = spec.pop("expected")
    return machine_facts(MACHINES_DIR / name / "root", **{**spec, **extra}), expected


@pytest.mark.parametrize("name", MACHINES)
def test_fake_machine_detects_expected_profile(name: str) -> None:
    facts, expected = fake_machine(name)
    d = detect(facts)
    assert d.profile.id == expected, d.ranking
    assert d.ranking[0][0] is d.profile and d.score == d.ranking[0][1]
    assert d.reasons[0] == f"architecture {facts.arch}"
    assert len(d.ranking) + len(d.rejected) == len(list_profiles())


def test_every_profile_has_a_fake_machine() -> None:
    """A new profile needs a fake device in tests/data/machines that detects to it."""
    detected = {fake_machine(name)[1] for name in MACHINES}
    assert detected == {p.id for p in list_profiles()}


def test_raspberry_pi_5_facts_and_reasons() -> None:
    facts, _ = fake_machine("raspberry-pi-5")
    assert facts.cpu_model == "ARM Cortex-A76"
    assert {"asimddp", "fphp"} <= facts.cpu_flags
    assert facts.device_tree_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert (facts.jetson_release, facts.gpus) == (None, [])
    d = detect(facts)
    assert d.reasons == [
        "architecture aarch64",
        "device-tree model 'Raspberry Pi 5 Model B Rev 1.0' matches 'Raspberry Pi 5'",
    ]
    assert [(p.id, s) for p, s, _ in d.ranking] == [("raspberry-pi-5", 11), ("generic-aarch64", 1)]
    rejected = dict((p.id, why) for p, why in d.rejected)
    assert rejected["raspberry-pi-4"] == (
        "no device-tree model matches Raspberry Pi 4 / Raspberry Pi 400 / Raspberry Pi Compute"
        " Module 4 (have: 'Raspberry Pi 5 Model B Rev 1.0')"
    )
    assert rejected["x86_64-avx512"] == "architecture aarch64 is not x86_64 / AMD64 / amd64"


def test_jetson_facts_and_reasons() -> None:
    facts, _ = fake_machine("jetson-agx-orin")
    assert (facts.jetson_release, facts.cpu_model) == ("R36.3.0", "ARM Cortex-A78AE")
    assert detect(facts).reasons == [
        "architecture aarch64",
        "Jetson Linux R36.3.0 (/etc/nv_tegra_release)",
        "device-tree model 'NVIDIA Jetson AGX Orin Developer Kit' matches 'Orin'",
    ]
    assert fake_machine("jetson-orin-nano")[0].jetson_release == "R35.4.1"


def test_jetson_with_nvidia_smi_is_not_a_desktop_gpu() -> None:
    # JetPack 6's nvidia-smi lists the integrated GPU as "Orin (nvgpu)".
    facts, _ = fake_machine("jetson-agx-orin", gpus=["NVIDIA Orin (nvgpu)"])
    d = detect(facts)
    assert d.profile.id == "jetson-orin"
    assert dict((p.id, why) for p, why in d.rejected)["nvidia-desktop-gpu"] == ("this is a Jetson")


def test_gpu_from_proc_driver_nvidia() -> None:
    facts, _ = fake_machine("x86-rtx3080-ryzen-5900x")
    assert facts.gpus == ["NVIDIA GeForce RTX 3080"]
    assert facts.cpu_model == "AMD Ryzen 9 5900X 12-Core Processor"
    assert "GPU 'NVIDIA GeForce RTX 3080' matches 'NVIDIA'" in detect(facts).reasons


def test_avx512_needs_vnni() -> None:
    facts, _ = fake_machine("x86-avx512-vnni-xeon-6338")
    assert detect(facts).reasons[1] == "CPU flags avx512f, avx512_vnni"
    without = MachineFacts(facts.arch, facts.os, facts.cpu_model, facts.cpu_flags - {"avx512_vnni"})
    d = detect(without)
    assert d.profile.id == "generic-x86_64"
    assert dict((p.id, why) for p, why in d.rejected)["x86_64-avx512"] == "CPU lacks avx512_vnni"


def test_openvino_needs_the_provider() -> None:
    facts, _ = fake_machine("x86-openvino-core-ultra-155h", ort_providers=["CPUExecutionProvider"])
    d = detect(facts)
    assert d.profile.id == "generic-x86_64"
    assert dict((p.id, why) for p, why in d.rejected)["intel-openvino"] == (
        "onnxruntime lacks OpenVINOExecutionProvider"
    )


def test_snapdragon_model_from_socinfo() -> None:
    facts, _ = fake_machine("snapdragon-rb5")
    assert facts.cpu_model == "Snapdragon SM8250"
    assert "CPU model 'Snapdragon SM8250' matches 'Snapdragon'" in detect(facts).reasons


def test_apple_silicon_from_platform_facts() -> None:
    facts, _ = fake_machine("apple-m2-pro")
    assert detect(facts).reasons == [
        "architecture arm64",
        "OS Darwin",
        "CPU model 'Apple M2 Pro' matches 'Apple M'",
    ]


def test_parsers() -> None:
    assert parse_cpuinfo("") == ("", frozenset())
    model, flags = parse_cpuinfo(
        "model name\t: ARMv7 Processor rev 3 (v7l)\nFeatures\t: neon vfpv4\n"
    )
    assert (model, flags) == ("", frozenset({"neon", "vfpv4"}))
    assert parse_jetson_release("garbage") is None
    assert parse_jetson_release("# R32 (release), REVISION: 7.4, GCID: 1") == "R32.7.4"


def test_no_profile_matches() -> None:
    with pytest.raises(EdgerunError) as info:
        detect(MachineFacts(arch="riscv64", os="Linux"))
    assert info.value.message == "no device profile matches this machine (riscv64, Linux)"


def test_this_machine() -> None:
    facts = machine_facts()
    assert facts.arch == platform.machine() and facts.os == platform.system()
    assert (
        facts.physical_cores and facts.ram_bytes and "CPUExecutionProvider" in facts.ort_providers
    )
    if facts.arch != "x86_64" or facts.gpus:
        pytest.skip("the expectation below is for a CPU-only x86-64 machine")
    vnni = {"avx512f", "avx512_vnni"} <= facts.cpu_flags
    assert detect(facts).profile.id == ("x86_64-avx512" if vnni else "generic-x86_64")


def test_cli_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    facts, _ = fake_machine("raspberry-pi-5", physical_cores=4, ram_bytes=8 * 2**30)
    monkeypatch.setattr("edgerun.device.detect.machine_facts", lambda: facts)
    result = runner.invoke(cli, ["profiles", "detect"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:8] == [
        "machine: aarch64 Linux, ARM Cortex-A76, 4 physical cores, 8.0 GiB RAM",
        "device tree: Raspberry Pi 5 Model B Rev 1.0",
        "gpus: none",
        "onnxruntime providers: none",
        "profile: raspberry-pi-5 (score 11)",
        "  because: architecture aarch64",
        "  because: device-tree model 'Raspberry Pi 5 Model B Rev 1.0' matches 'Raspberry Pi 5'",
        "  also matches: generic-aarch64 (score 1: architecture aarch64)",
    ]
    assert lines[8] == "  ruled out: apple-silicon (OS Linux is not Darwin)"
    assert len(lines) == 8 + len(list_profiles()) - 2
    data = json.loads(runner.invoke(cli, ["profiles", "detect", "--json"]).output)
    assert (data["profile"], data["score"]) == ("raspberry-pi-5", 11)
    assert data["facts"]["device_tree_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert [r["id"] for r in data["ranking"]] == ["raspberry-pi-5", "generic-aarch64"]


def test_cli_detect_on_this_machine() -> None:
    result = runner.invoke(cli, ["profiles", "detect"])
    assert result.exit_code == 0, result.output
    assert f"profile: {detect().profile.id} (score " in result.output
    assert result.output.startswith(f"machine: {platform.machine()} {platform.system()}, ")


def test_live_nvidia_smi_and_sysctl_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi -L and macOS sysctl output, recorded, through the live code path."""
    outputs = {
        "nvidia-smi": (
            "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1f0c6a55-2b9e-4c1d-8e0f-3a7b9c2d4e61)\n"
            "GPU 1: NVIDIA GeForce RTX 4090 (UUID: GPU-9a8b7c6d-5e4f-3a2b-1c0d-efab12345678)\n"
        ),
        "sysctl": "Apple M3 Max\n",
    }
    monkeypatch.setattr("edgerun.device.machine._run", lambda cmd: outputs[cmd[0]])
    facts = machine_facts()
    assert facts.gpus == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    if facts.arch in ("x86_64", "aarch64"):
        assert detect(facts).profile.id == "nvidia-desktop-gpu"
    monkeypatch.setattr("platform.system", lambda: "Darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    facts = machine_facts()
    assert (facts.arch, facts.os, facts.cpu_model) == ("arm64", "Darwin", "Apple M3 Max")
    assert detect(facts).profile.id == "apple-silicon"


def test_windows_on_snapdragon_reads_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import types

    values = {
        "ProcessorNameString": ("Snapdragon(R) X Elite - X1E78100 - Qualcomm(R) Oryon(TM) CPU", 1)
    }
    winreg = types.SimpleNamespace(
        HKEY_LOCAL_MACHINE=object(),
        OpenKey=lambda hive, key: contextlib.nullcontext(key),
        QueryValueEx=lambda handle, name: values[name],
    )
    monkeypatch.setitem(sys.modules, "winreg", winreg)
    monkeypatch.setattr("platform.system", lambda: "Windows")
    monkeypatch.setattr("platform.machine", lambda: "ARM64")
    facts = machine_facts()
    assert facts.cpu_model.startswith("Snapdragon(R) X Elite")
    d = detect(facts)
    assert d.profile.id == "snapdragon"
    assert d.reasons[1] == f"CPU model '{facts.cpu_model}' matches 'Snapdragon'"
