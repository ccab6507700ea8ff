"""llama.cpp's own HF -> GGUF converter, at the version of the installed llama-cpp-python.

llama-cpp-python's source distribution on PyPI vendors llama.cpp, and with it
`convert_hf_to_gguf.py`, its `conversion/` package (one module per model family) and the matching
`gguf-py`. `ensure()` fetches that sdist once through pip (so a lab's index or mirror applies),
checks its sha256, and extracts just those files under `$EDGERUN_HOME/converters/`. Nothing of
llama.cpp's is copied into this repository; the converter then runs in a subprocess
(edgerun.exporters.gguf.convert).

Offline machines: set EDGERUN_LLAMA_CPP_SDIST to a downloaded `llama_cpp_python-<v>.tar.gz`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import atomic_dir, atomic_write_json, cache_dir
from edgerun.core.integrity import sha256_file
from edgerun.core.untrusted import read_json_object

DIST = "llama_cpp_python"
SDIST_ENV = "EDGERUN_LLAMA_CPP_SDIST"
# sha256 of the PyPI sdist of each llama-cpp-python version edgerun was tested with. Another
# version is still fetched (pip checks the index's own hash) and its hash recorded, unpinned.
PINNED_SHA256: dict[str, str] = {
    "0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
}
# tree_digest() of the files edgerun extracts from each pinned sdist: a cache that claims to be
# pinned must hold exactly these.
PINNED_TREE: dict[str, str] = {
    "0.3.36": "9b0a4852a91224c72b5620e27a00c98d0bdf9fee9b9740f70a75aff918c7af83",
}
# What is extracted from vendor/llama.cpp/: the converter, its package, gguf-py, the licence.
KEEP_PREFIXES = ("conversion/", "gguf-py/gguf/")
KEEP_FILES = ("convert_hf_to_gguf.py", "LICENSE")
MAX_MEMBER_BYTES = 16 * 1024 * 1024  # the largest kept file is ~0.3 MB; a bigger one is foreign
SOURCE_FILE = "SOURCE.json"


@dataclass(frozen=True)
class Converter:
    """An extracted converter: its directory, the llama.cpp version tag and provenance."""

    root: Path
    version: str  # llama-cpp-python's version
    sha256: str  # of the sdist it came from
    pinned: bool  # sha256 matched PINNED_SHA256

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def provenance(self) -> dict[str, object]:
        return {
            "converter": "llama.cpp convert_hf_to_gguf.py",
            "from": f"{DIST}-{self.version} sdist",
            "sha256": self.sha256,
            "pinned": self.pinned,
        }


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DIST)
    except PackageNotFoundError:
        raise EdgerunError(
            "GGUF export needs llama-cpp-python (its converter and its runtime)",
            "pip install 'edgerun[gguf]'",
        ) from None


def ensure(progress: bool = False) -> Converter:
    """The converter for the installed llama-cpp-python, fetched and extracted on first use.

    A cached one is re-verified before every use: each extracted file against the sha256
    recorded at extraction (and, for a pinned version, against the pinned tree), no file added.
    A damaged cache is rebuilt from the sdist; EdgerunError (one line) when it cannot be."""
    version = installed_version()
    root = cache_dir("converters") / f"llama.cpp-{version}"
    if not root.exists():
        return _build(root, version, progress)
    info, problem = _verify(root, version)
    if info is not None:
        return Converter(
            root, version, info["sha256"], info["sha256"] == PINNED_SHA256.get(version)
        )
    if progress:
        print(f"the cached llama.cpp converter is damaged ({problem}): rebuilding", file=sys.stderr)
    try:
        return _build(root, version, progress)
    except EdgerunError as exc:
        raise EdgerunError(
            f"the cached llama.cpp converter {root} is damaged ({problem}) and cannot be rebuilt:"
            f" {exc.message}",
            exc.hint,
        ) from exc


def _build(root: Path, version: str, progress: bool) -> Converter:
    """Fetch the sdist, check its hash, extract the converter into `root` (replacing what is
    there) with the sha256 of every extracted file recorded in SOURCE.json."""
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root.parent) as tmp:
        sdist = _sdist(version, Path(tmp), progress)
        digest = sha256_file(sdist)
        pinned = PINNED_SHA256.get(version)
        if pinned is not None and digest != pinned:
            raise EdgerunError(
                f"{sdist.name} has sha256 {digest[:16]}…, not the pinned {pinned[:16]}…",
                f"the file was altered or the index serves another build; remove it or unset {SDIST_ENV}",
            )
        with atomic_dir(root, overwrite=True) as staging:
            extract(sdist, staging)
            files = tree_hashes(staging)
            if pinned is not None and tree_digest(files) != PINNED_TREE.get(version):
                raise EdgerunError(
                    f"{sdist.name} matches its pinned sha256 but its converter files do not",
                    "a bug in edgerun's pins: report it",
                )
            source = {"sdist": sdist.name, "sha256": digest, "pinned": pinned is not None}
            atomic_write_json(staging / SOURCE_FILE, {**source, "files": files})
    return Converter(root, version, digest, pinned is not None)


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file under `root` but SOURCE.json; a symbolic
    link or other non-regular entry is listed with the hash "link" (never a valid sha256)."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            hashes[name] = "link"
        elif path.is_file() and name != SOURCE_FILE:
            hashes[name] = sha256_file(path)
    return hashes


def tree_digest(files: dict[str, str]) -> str:
    """One sha256 over a tree_hashes() listing (what PINNED_TREE records)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()


def _verify(root: Path, version: str) -> tuple[dict[str, Any] | None, str]:
    """(SOURCE.json's record, "") when the cache at `root` holds exactly the files recorded at
    extraction, else (None, what is wrong)."""
    try:
        info = read_json_object(root / SOURCE_FILE, "")
    except EdgerunError:
        return None, f"{SOURCE_FILE} is missing or unreadable"
    files, digest = info.get("files"), info.get("sha256")
    if not isinstance(digest, str) or not isinstance(files, dict) or not files:
        return None, f"{SOURCE_FILE} records no file hashes"
    pinned = PINNED_SHA256.get(version)
    if pinned is not None and (digest != pinned or tree_digest(files) != PINNED_TREE.get(version)):
        return None, f"{SOURCE_FILE} does not record the pinned sdist and files"
    actual = tree_hashes(root)
    for name in sorted(set(files) | set(actual)):
        if name not in actual:
            return None, f"{name} is missing"
        if name not in files:
            return None, f"{name} was added"
        if actual[name] != files[name]:
            return None, f"{name} has changed"
    return info, ""


def _sdist(version: str, tmp: Path, progress: bool) -> Path:
    given = os.environ.get(SDIST_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise EdgerunError(
                f"{SDIST_ENV}={given} is not a file", f"point it at {DIST}-{version}.tar.gz"
            )
        return path
    if progress:
        print(f"fetching llama.cpp's converter: {DIST}=={version} sdist, once", file=sys.stderr)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "--dest", str(tmp), f"llama-cpp-python=={version}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(tmp.glob(f"{DIST}-{version}.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgerunError(
            f"cannot fetch llama-cpp-python {version}'s source (for its GGUF converter): {last}",
            f"check the package index, or set {SDIST_ENV} to a downloaded {DIST}-{version}.tar.gz",
        )
    return found[0]


def _kept(relative: PurePosixPath) -> bool:
    text = relative.as_posix()
    return text in KEEP_FILES or (text.startswith(KEEP_PREFIXES) and text.endswith(".py"))


def extract(sdist: Path, dest: Path) -> int:
    """Extract the kept files of vendor/llama.cpp/ into `dest`: regular files only, no path
    outside `dest`, each bounded in size. Returns how many; EdgerunError if the converter is
    not among them."""
    count = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp"):
                    continue
                relative = PurePosixPath(*parts[3:])
                if not member.isfile() or not _kept(relative) or ".." in relative.parts:
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise EdgerunError(
                        f"{sdist.name}: {relative} is {member.size} bytes", "not a llama.cpp sdist"
                    )
                target = dest.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                count += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise EdgerunError(f"cannot read {sdist.name}: {exc}", "delete it and retry") from exc
    if not (dest / "convert_hf_to_gguf.py").is_file() or not (dest / "conversion").is_dir():
        raise EdgerunError(
            f"{sdist.name} carries no vendor/llama.cpp/convert_hf_to_gguf.py",
            "this llama-cpp-python version's sdist has no converter; install another version",
        )
    return count
