"""The ARM lane's own logic, without emulation (tests/arm/lane.sh runs the lane itself): the CPU
features read from the auxiliary vector, the cpuinfo and device tree it fakes detect to the
profile it expects, and which level-4 results it calls failures."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.device.detect import detect
from edgerun.device.machine import machine_facts

LANE = Path(__file__).parent / "arm"
sys.path.insert(0, str(LANE))
import check  # noqa: E402

# A few of a Cortex-A76's AT_HWCAP bits, dot product (asimddp, bit 20) among them.
A76_HWCAP = sum(1 << check.HWCAP.index(n) for n in ["fp", "asimd", "aes", "asimddp", "cpuid"])


def test_hwcaps_reads_the_auxiliary_vector(tmp_path: Path) -> None:
    auxv = tmp_path / "auxv"
    pairs = [(6, 4096), (16, A76_HWCAP), (26, 1 << check.HWCAP2.index("i8mm")), (0, 0)]
    auxv.write_bytes(b"".join(struct.pack("<QQ", *p) for p in pairs))
    assert check.hwcaps(auxv) == ["fp", "asimd", "aes", "cpuid", "asimddp", "i8mm"]


@pytest.mark.parametrize(
    ("midr", "tree", "expected"),
    [
        ("0x41 0x0 0xd08 3", "Raspberry Pi 4 Model B Rev 1.4", "raspberry-pi-4"),
        ("0x41 0x4 0xd0b 1", "Raspberry Pi 5 Model B Rev 1.0", "raspberry-pi-5"),
        ("0x41 0x4 0xd0c 1", "", "generic-aarch64"),
    ],
)
def test_the_faked_machine_detects_to_the_expected_profile(
    tmp_path: Path, midr: str, tree: str, expected: str
) -> None:
    """write_cpuinfo of lane.sh, and the device tree it fakes, as detection reads them."""
    (tmp_path / "proc").mkdir()
    script = f'source <(sed -n "/^write_cpuinfo()/,/^}}/p" {LANE / "lane.sh"}); write_cpuinfo "$@"'
    args = [str(tmp_path / "proc/cpuinfo"), midr, "fp asimd cpuid asimddp"]
    subprocess.run(["bash", "-c", script, "lane", *args], check=True, timeout=30)
    if tree:
        model = tmp_path / "sys/firmware/devicetree/base/model"
        model.parent.mkdir(parents=True)
        model.write_bytes(tree.encode() + b"\0")
    facts = machine_facts(tmp_path, arch="aarch64", os="Linux")
    assert "asimddp" in facts.cpu_flags
    assert detect(facts).profile.id == expected


def _result(l4_vs_l1: float, features: list[str]) -> dict:
    same = {"tokens_equal": True, "max_abs": 1e-6, "max_rel": 1e-7, "profile": "p"}
    l4 = {**same, "max_abs": 0.05, "max_rel": 0.01, "vs_host_l1": {"max_abs": l4_vs_l1}}
    return {
        "detected": "p",
        "expected": "p",
        "features": features,
        "artifacts": {"fp32": same, "int4-l1": same, "int4-l4": l4},
        "fidelity": {"passed": True, "reasons": [], "seconds": 1.0},
        "fidelity_damaged": {"passed": False, "reasons": ["x"], "device": {}, "seconds": 1.0},
        "serve": {"ok": True},
    }


def test_level_4_must_show_the_kernel_the_cpu_has() -> None:
    assert check.failures(_result(1e-6, ["asimd"])) == []
    assert check.failures(_result(0.3, ["asimd", "asimddp"])) == []
    (no_dot,) = check.failures(_result(0.3, ["asimd"]))
    assert "no dot products, yet 0.3 from the host's fp32 compute" in no_dot
    (dot,) = check.failures(_result(1e-6, ["asimd", "asimddp"]))
    assert "no int8 kernel ran" in dot
    broken = _result(0.3, ["asimddp"])
    broken["artifacts"]["int4-l4"]["max_rel"] = float("nan")
    assert check.failures(broken) == ["int4-l4: logits differ by nan% of their range"]


def test_a_device_outside_the_fidelity_bound_fails_the_lane() -> None:
    result = _result(1e-6, ["asimd"])
    result["fidelity"] = {"passed": False, "reasons": ["mean KL 0.4 > 0.3"], "seconds": 2.0}
    assert check.failures(result) == ["verify --fidelity: mean KL 0.4 > 0.3"]
    result["fidelity"] = {"passed": False, "error": "error: no reference", "seconds": 0.5}
    assert check.failures(result) == ["verify --fidelity: error: no reference"]
    result = _result(1e-6, ["asimd"])
    result["fidelity_damaged"] = {"passed": True, "reasons": [], "device": {}, "seconds": 2.0}
    (missed,) = check.failures(result)
    assert missed.startswith("verify --fidelity did not flag int4 scales x3")
