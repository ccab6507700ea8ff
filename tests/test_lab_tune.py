"""`edgerun lab tune` on a real local Dask lab: two devices tune a tiny real artifact at once,
each writes its tuned profile in its own home, and the host collects both."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from edgerun.cli import cli  # noqa: E402
from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.device.profile import get_profile, parse_profile  # noqa: E402
from edgerun.lab.tune import check_tuned, slug  # noqa: E402
from tests.lab_cluster import MACHINES, running_lab  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_every_device_tunes_and_the_host_collects_the_profiles(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from tests.runtime_helpers import export_artifact

    artifact = export_artifact(tiny_llama, "onnx-fp32", tmp_path / "ort")
    out = tmp_path / "profiles"
    machines = {"desk": MACHINES / "x86-avx2-i7-8700", "here": None}
    with running_lab(tmp_path / "lab", machines) as (cluster, _client):  # type: ignore[arg-type]
        result = CliRunner().invoke(
            cli,
            ["lab", "tune", cluster.address, str(artifact), "--budget", "20s",
             "--prompt-tokens", "4", "--gen-tokens", "4", "--out", str(out)],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = sorted(result.stdout.strip().splitlines())
    assert [line.split(":")[0] for line in lines] == ["desk", "here"], result.output
    for device in ("desk", "here"):
        (toml,) = (out / device).glob("tuned-*.toml")
        profile = parse_profile(toml.read_text(), str(toml))
        assert profile.tuned["trials"] >= 1 and profile.tuned["base"]
        provenance = (toml.parent / f"{profile.id}.tune.json").read_text()
        assert '"search"' in provenance
        # the device wrote the same profile into its own home: its run / serve / bench use it
        assert (tmp_path / "lab" / device / "profiles" / toml.name).read_text() == toml.read_text()
    # the posing device tuned from its own profile (tests/test_lab.py: DEVICES)
    assert (out / "desk" / "tuned-generic-x86_64.toml").is_file()


def test_a_device_answer_that_is_not_a_tuned_profile_is_refused() -> None:
    base = get_profile("generic-x86_64")
    from edgerun.tune.profile_write import profile_toml

    toml = profile_toml(base)
    with pytest.raises(EdgerunError, match="not a tuned profile"):
        check_tuned({"profile_id": base.id, "toml": toml, "provenance": {}}, "d")
    with pytest.raises(EdgerunError, match="invalid TOML"):
        check_tuned({"profile_id": "tuned-x", "toml": "id = [", "provenance": {}}, "d")
    with pytest.raises(EdgerunError, match="not an answer of lab tune"):
        check_tuned({"toml": toml}, "d")
    assert slug("../../etc/passwd") == "etc-passwd" and slug("..") == "device"
