"""Fetching llama.cpp's converter: the sdist is hash-checked, only the converter's files are
extracted (regular files inside the cache), and every failure is one line naming the fix."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgerun.core.errors import EdgerunError
from edgerun.exporters.gguf import converter

PREFIX = "llama_cpp_python-9.9.9/vendor/llama.cpp/"


def _sdist(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


GOOD = {
    PREFIX + "convert_hf_to_gguf.py": b"print('converter')\n",
    PREFIX + "conversion/__init__.py": b"",
    PREFIX + "conversion/llama.py": b"X = 1\n",
    PREFIX + "gguf-py/gguf/__init__.py": b"",
    PREFIX + "LICENSE": b"MIT\n",
    PREFIX + "src/llama.cpp": b"// not needed\n",
    PREFIX + "conversion/notes.md": b"not python\n",
}


def test_extract_keeps_only_the_converter_files(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path / "s.tar.gz", GOOD)
    dest = tmp_path / "out"
    dest.mkdir()
    assert converter.extract(sdist, dest) == 5
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == [
        "LICENSE",
        "conversion/__init__.py",
        "conversion/llama.py",
        "convert_hf_to_gguf.py",
        "gguf-py/gguf/__init__.py",
    ]


def test_extract_skips_links_and_paths_that_climb_out(tmp_path: Path) -> None:
    members = {**GOOD, PREFIX + "conversion/../../../escape.py": b"bad\n"}
    sdist = _sdist(tmp_path / "s.tar.gz", members, {PREFIX + "conversion/link.py": "/etc/passwd"})
    dest = tmp_path / "out"
    dest.mkdir()
    converter.extract(sdist, dest)
    assert not (dest / "conversion" / "link.py").exists()
    assert not list(tmp_path.rglob("escape.py"))


def test_an_sdist_without_the_converter_is_refused(tmp_path: Path) -> None:
    sdist = _sdist(tmp_path / "s.tar.gz", {PREFIX + "LICENSE": b"MIT\n"})
    with pytest.raises(EdgerunError, match="carries no vendor/llama.cpp/convert_hf_to_gguf.py"):
        converter.extract(sdist, tmp_path)
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(EdgerunError, match="cannot read broken.tar.gz"):
        converter.extract(tmp_path / "broken.tar.gz", tmp_path)


def _pin(monkeypatch: pytest.MonkeyPatch, sdist: Path, version: str, staged: Path) -> None:
    """Pin `version` to the fake `sdist`: its sha256 and the tree of its extracted files."""
    monkeypatch.setitem(converter.PINNED_SHA256, version, converter.sha256_file(sdist))
    staged.mkdir()
    converter.extract(sdist, staged)
    tree = converter.tree_digest(converter.tree_hashes(staged))
    monkeypatch.setitem(converter.PINNED_TREE, version, tree)


def test_a_pinned_version_with_another_hash_is_refused_and_nothing_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edgerun_home: Path
) -> None:
    sdist = _sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz", GOOD)
    monkeypatch.setattr(converter, "installed_version", lambda: "9.9.9")
    monkeypatch.setitem(converter.PINNED_SHA256, "9.9.9", "0" * 64)
    monkeypatch.setenv(converter.SDIST_ENV, str(sdist))
    with pytest.raises(EdgerunError, match="not the pinned 0000000000000000"):
        converter.ensure()
    assert not (edgerun_home / "converters" / "llama.cpp-9.9.9").exists()
    _pin(monkeypatch, sdist, "9.9.9", tmp_path / "staged")
    tool = converter.ensure()
    assert tool.pinned and tool.script.read_bytes() == GOOD[PREFIX + "convert_hf_to_gguf.py"]
    assert converter.ensure().root == tool.root  # cached: the second call fetches nothing


def test_an_unreachable_index_names_the_offline_fix(
    monkeypatch: pytest.MonkeyPatch, edgerun_home: Path
) -> None:
    monkeypatch.setattr(converter, "installed_version", lambda: "9.9.8")
    monkeypatch.delenv(converter.SDIST_ENV, raising=False)

    def offline(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(converter.subprocess, "run", offline)
    with pytest.raises(EdgerunError, match="cannot fetch llama-cpp-python 9.9.8") as info:
        converter.ensure()
    assert converter.SDIST_ENV in (info.value.hint or "")
    monkeypatch.setenv(converter.SDIST_ENV, "/no/such/file.tar.gz")
    with pytest.raises(EdgerunError, match="is not a file"):
        converter.ensure()


def _cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> converter.Converter:
    """A converter extracted from a fake sdist of `version`, given through SDIST_ENV."""
    sdist = _sdist(tmp_path / f"llama_cpp_python-{version}.tar.gz", GOOD)
    monkeypatch.setattr(converter, "installed_version", lambda: version)
    monkeypatch.setenv(converter.SDIST_ENV, str(sdist))
    return converter.ensure()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("edit", "conversion/llama.py has changed"),
        ("add", "json.py was added"),
        ("remove", "LICENSE is missing"),
        ("pycache", "conversion/__pycache__/llama.cpython-311.pyc was added"),
        ("source-json", "SOURCE.json is missing or unreadable"),
        ("source-keys", "SOURCE.json records no file hashes"),
    ],
)
def test_a_damaged_converter_cache_is_rebuilt_or_refused(
    damage: str,
    why: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _cached(monkeypatch, tmp_path, "9.9.7").root
    before = converter.tree_hashes(root)
    if damage == "edit":
        (root / "conversion" / "llama.py").write_text("import os; os.system('touch /tmp/x')\n")
    elif damage == "add":
        (root / "json.py").write_text("raise SystemExit\n")  # would shadow the stdlib module
    elif damage == "remove":
        (root / "LICENSE").unlink()
    elif damage == "pycache":
        (root / "conversion" / "__pycache__").mkdir()
        (root / "conversion" / "__pycache__" / "llama.cpython-311.pyc").write_bytes(b"\0")
    elif damage == "source-json":
        (root / converter.SOURCE_FILE).write_text("{not json")
    else:
        (root / converter.SOURCE_FILE).write_text('{"sdist": "x"}')
    again = converter.ensure(progress=True)
    assert why in capsys.readouterr().err
    assert again.root == root and converter.tree_hashes(root) == before
    # the same damage where the sdist cannot be had again: one line naming the fix
    (root / "conversion" / "llama.py").write_text("changed\n")
    monkeypatch.setenv(converter.SDIST_ENV, str(tmp_path / "gone.tar.gz"))
    with pytest.raises(
        EdgerunError, match="converter .* is damaged .*has changed.* cannot be rebuilt"
    ):
        converter.ensure()


def test_a_pinned_claim_needs_the_pinned_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing a file and its recorded hash together still fails a pinned version's check."""
    import json

    sdist = _sdist(tmp_path / "llama_cpp_python-9.9.6.tar.gz", GOOD)
    _pin(monkeypatch, sdist, "9.9.6", tmp_path / "staged")
    tool = _cached(monkeypatch, tmp_path, "9.9.6")
    assert tool.pinned and tool.provenance()["pinned"] is True
    source = tool.root / converter.SOURCE_FILE
    edited = tool.root / "conversion" / "llama.py"
    edited.write_text("X = 2\n")
    info = json.loads(source.read_text())
    info["files"]["conversion/llama.py"] = converter.sha256_file(edited)
    source.write_text(json.dumps(info))
    again = converter.ensure()
    assert again.pinned and edited.read_text() == "X = 1\n"  # rebuilt from the sdist


def test_the_pinned_tree_matches_the_pinned_sdist() -> None:
    """Every pinned version has its extracted files pinned too."""
    assert sorted(converter.PINNED_TREE) == sorted(converter.PINNED_SHA256)
    assert all(len(v) == 64 for v in converter.PINNED_TREE.values())
