"""A pulled checkpoint in `$EDGERUN_HOME/models`: its marker, and the check that it is whole.

The marker `.edgerun-source.json` is written last, inside the temporary directory, so an entry
with a marker was complete once. Files can still go missing later (a cleaner, a full disk, a
hand-edit), so every cache hit checks that the files the marker lists are there at their recorded
sizes; a damaged entry is an error that names `edgerun pull --refresh`, never a silent hit.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

SOURCE_MARKER = ".edgerun-source.json"


def refresh_hint(source: str) -> str:
    """The fix for a damaged cache entry of `source`."""
    return f"rebuild it with: edgerun pull --refresh {shlex.quote(source)}"


def write_marker(tmp: Path, meta: dict[str, Any]) -> None:
    """Write the marker into the finished entry `tmp`, with the name and size of every file."""
    from edgerun.core.home import atomic_write_json

    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    atomic_write_json(tmp / SOURCE_MARKER, {**meta, "files": files})


def read_entry(entry: Path, source: str) -> dict[str, Any] | None:
    """The marker of the cache entry `entry`, or None when there is no entry yet.

    Raises EdgerunError (hint: `edgerun pull --refresh`) when the entry exists but has no marker,
    a damaged marker, or lacks a file it should hold."""
    from edgerun.core.untrusted import read_json_object

    if not entry.exists():
        return None
    hint = refresh_hint(source)
    marker = entry / SOURCE_MARKER
    if not marker.is_file():
        raise EdgerunError(f"cache entry {entry} is damaged (it has no {SOURCE_MARKER})", hint)
    meta = read_json_object(marker, hint)
    if not isinstance(meta.get("kind"), str) or not all(
        isinstance(meta.get(k), (str, type(None))) for k in ("revision", "gguf_sha256")
    ):
        raise EdgerunError(f"{marker} is damaged (kind, revision or gguf_sha256)", hint)
    problem = _missing(entry, meta.get("files"))
    if problem:
        raise EdgerunError(f"cache entry {entry} is damaged: {problem}", hint)
    return meta


def _missing(entry: Path, files: Any) -> str | None:
    """What is missing from `entry`, judged by the marker's file list when it has one."""
    if files is None:  # an entry pulled before markers listed files
        return _missing_checkpoint_part(entry)
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and Path(k).name == k and k not in ("", ".", "..") and type(v) is int
        for k, v in files.items()
    ):
        return f"{SOURCE_MARKER} has a malformed file list"
    for name, size in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was pulled"
    return _missing_checkpoint_part(entry)


def _missing_checkpoint_part(entry: Path) -> str | None:
    from edgerun.sources.checkpoint import check_checkpoint_dir

    try:
        check_checkpoint_dir(entry)
    except EdgerunError as exc:
        return "it " + exc.message.removeprefix(f"{entry} ")
    return None


def report_hit(entry: Path, source: str, progress: bool) -> None:
    """Tell the user that `source` came from the cache."""
    if progress:
        print(f"{source}: cached at {entry}", file=sys.stderr)
