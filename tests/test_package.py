"""Packaging: the import stays lean, every package ships, the wheel carries data files."""

from __future__ import annotations

import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgerun
from edgerun.cli import COMMANDS, cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {
    "edgerun": ROOT / "edgerun",
    "edgerun.exporters": ROOT / "exporters",
    "edgerun.profiles": ROOT / "profiles",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_import_edgerun_loads_no_heavy_framework() -> None:
    code = (
        "import sys, edgerun, edgerun.cli, edgerun.core.manifest, edgerun.sources.describe, edgerun.sources.resolve\n"
        "print(','.join(m for m in ('torch', 'transformers', 'optimum', 'onnx', 'llama_cpp') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_command_module_imports_lean() -> None:
    """`edgerun <cmd> --help` must not pay for torch either."""
    modules = sorted({target.split(":")[0] for target in COMMANDS.values()})
    code = (
        f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_pyproject_lists_every_package() -> None:
    """An explicit package list silently drops a new sub-package from the wheel: guard it."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set()
    for prefix, root in PACKAGE_DIRS.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((prefix, *rel)))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["--version"]).output == f"edgerun, version {edgerun.__version__}\n"
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"\n  {name} " in result.output


@pytest.mark.slow
def test_wheel_contains_packages_and_data(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("edgerun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgerun/py.typed" in names
    assert "edgerun/exporters/__init__.py" in names
    assert "edgerun/exporters/validate.py" in names
    shipped_profiles = {
        n for n in names if n.startswith("edgerun/profiles/") and n.endswith(".toml")
    }
    assert {
        f"edgerun/profiles/{p.name}" for p in (ROOT / "profiles").glob("*.toml")
    } == shipped_profiles
    data = [p for p in (ROOT / "exporters" / "data").glob("*") if p.is_file()]
    for p in data:
        assert f"edgerun/exporters/data/{p.name}" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "exporters/")) for n in names)


def test_atomic_write_honours_umask(tmp_path: Path) -> None:
    import os

    from edgerun.core.home import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_library_surface_names_its_options_and_error(tmp_path: Path) -> None:
    """`edgerun.load` shows its options (not hidden behind **options) and its error is importable
    from the package, so library users catch it without knowing the module layout."""
    params = inspect.signature(edgerun.load).parameters
    assert {"threads", "context", "backend", "strict", "verify"} <= set(params)
    with pytest.raises(edgerun.EdgerunError):
        edgerun.load(tmp_path / "missing")
