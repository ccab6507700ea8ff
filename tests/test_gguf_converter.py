"""Fetching llama.cpp's converter: the sdist is hash-checked, only the converter's files are
extracted (regular files inside the cache), and every failure is one line naming the fix."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from edgerun.exporters.gguf import converter

from edgerun.errors import EdgerunError

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
    monkeypatch.setitem(converter.PINNED_SHA256, "9.9.9", converter.sha256_file(sdist))
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
