"""Every name a registry holds has a test fixture here, so adding a meter, a backend, a format
family, a model family or a GGUF quirk without its fixture fails. The tables live in
tests/registry_fixtures.py (model families: FAMILY_SPECS in tests/tiny_models.py; device profiles:
a fake machine each, tests/test_detect.py::test_every_profile_has_a_fake_machine). Every guard
here runs on a lean install too: none needs torch, llama.cpp or gguf-py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.power.registry import METERS
from tests.registry_fixtures import (
    BACKEND_ARTIFACTS,
    METER_FIXTURES,
    QUIRK_CHECKPOINTS,
    QUIRK_FIXES,
)
from tests.tiny_models import FAMILY_SPECS


def same_names(registered: object, fixtures: object, what: str) -> None:
    """The registry and its fixture table name the same things; else say which side lacks which."""
    left, right = set(registered), set(fixtures)  # type: ignore[call-overload]
    assert left == right, (
        f"{what}: registered without a fixture: {sorted(left - right)}; "
        f"a fixture for nothing registered: {sorted(right - left)}"
    )


def test_every_registered_meter_has_a_fixture() -> None:
    same_names(METERS, METER_FIXTURES, "power meters (METER_FIXTURES)")


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

    same_names(backend_names(), BACKEND_ARTIFACTS, "backends (BACKEND_ARTIFACTS)")


def test_every_format_family_is_in_the_family_matrix() -> None:
    from edgerun.core.format_registry import FAMILY_MODULES
    from edgerun.exporters.families import FORMATS

    same_names(FAMILY_MODULES, {fmt.split("-")[0] for fmt in FORMATS}, "format families (FORMATS)")


def test_every_gguf_quirk_has_a_refused_and_an_accepted_checkpoint() -> None:
    """A quirk that refuses has a refused and an accepted config; one that fixes the
    converter's config has a config it fixes and one it leaves alone."""
    import importlib

    from edgerun.exporters.gguf.quirks import MODULES

    modules = {name: importlib.import_module(path) for name, path in MODULES.items()}
    checks = [n for n, m in modules.items() if hasattr(m, "check")]
    same_names(checks, QUIRK_CHECKPOINTS, "refusing quirks (QUIRK_CHECKPOINTS)")
    same_names([n for n, m in modules.items() if hasattr(m, "fix")], QUIRK_FIXES, "fixing quirks")
    assert all(hasattr(m, "check") or hasattr(m, "fix") for m in modules.values())


def test_every_registered_family_has_a_tiny_checkpoint_of_its_kind() -> None:
    from edgerun.exporters.families import FAMILIES

    same_names([f.name for f in FAMILIES], FAMILY_SPECS, "model families (FAMILY_SPECS)")
    for family in FAMILIES:
        model_type, _, tokenizer = FAMILY_SPECS[family.name]
        assert (model_type, tokenizer) == (family.model_type, family.tokenizer), family.name


# Blocks the heavy libraries, as on a lean install (pip install edgerun without extras).
LEAN = """
import sys
HEAVY = {"torch", "transformers", "optimum", "llama_cpp", "gguf", "onnx", "onnxruntime",
         "onnxruntime_genai", "safetensors", "accelerate"}
class Lean:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"no module named {name!r} (lean install)")
sys.meta_path.insert(0, Lean())
import pytest
sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", __file__, "-k", "not lean"]))
"""


def test_a_guard_names_what_is_missing() -> None:
    with pytest.raises(
        AssertionError, match=r"without a fixture: \['new'\]; .* nothing registered: \[\]"
    ):
        same_names(["a", "new"], ["a"], "things")


def test_the_guards_run_on_a_lean_install() -> None:
    """Every guard above runs, none skipped, with torch, llama.cpp and gguf-py unimportable."""
    import subprocess
    import sys

    here = Path(__file__)
    script = LEAN.replace("__file__", repr(str(here)))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=here.parents[1], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "skipped" not in done.stdout and " passed" in done.stdout, done.stdout[-2000:]
