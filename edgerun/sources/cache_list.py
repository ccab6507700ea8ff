"""The pulled-model cache as a user sees it: `edgerun list` and `edgerun rm`.

Entries live in `$EDGERUN_HOME/models/<name>`; each is judged by its marker (edgerun.sources.cache_entry),
so a damaged entry is listed with what is wrong instead of being skipped or trusted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import models_dir
from edgerun.core.untrusted import read_json_object
from edgerun.sources.cache_entry import SOURCE_MARKER, read_entry


@dataclass(frozen=True)
class CachedModel:
    """One entry of the model cache: its name, where it came from, its size and its state."""

    name: str
    path: Path
    source: str | None
    kind: str | None
    size_bytes: int
    modified: str
    problem: str | None  # None: whole; else why it is damaged

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def cached_models() -> list[CachedModel]:
    """Every entry of the model cache, sorted by name (leftovers of killed pulls are swept)."""
    root = models_dir()
    return [_describe(entry) for entry in sorted(root.iterdir()) if _is_entry(entry)]


def remove_model(name: str) -> CachedModel:
    """Remove the cache entry called `name` (as `cached_models` lists it, or the source it was
    pulled from); returns what was removed. EdgerunError naming the entries when none matches."""
    models = cached_models()
    matches = [m for m in models if name in (m.name, m.source)]
    if not matches:
        known = ", ".join(m.name for m in models) or "none"
        raise EdgerunError(f"no cached model called {name!r}", f"cached: {known} (edgerun list)")
    if len(matches) > 1:
        names = ", ".join(m.name for m in matches)
        raise EdgerunError(f"{name!r} names {len(matches)} entries", f"name one of: {names}")
    entry = matches[0]
    # Renamed first, so a crash mid-delete leaves a leftover the next run sweeps, never a
    # half-deleted entry that looks like a cached model.
    doomed = entry.path.with_name(f".tmp-rm-{os.getpid()}-{entry.name}")
    entry.path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return entry


def _is_entry(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not path.name.startswith(".")


def _describe(entry: Path) -> CachedModel:
    problem = None
    meta: dict[str, Any] = {}
    try:
        meta = read_entry(entry, entry.name) or {}
    except EdgerunError as exc:
        problem = exc.message.replace(f"cache entry {entry} is damaged: ", "")
        with contextlib.suppress(EdgerunError):  # still name the source when the marker reads
            meta = read_json_object(entry / SOURCE_MARKER, "")
    files = [p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()]
    stamp = max((p.stat().st_mtime for p in files), default=entry.stat().st_mtime)
    return CachedModel(
        name=entry.name,
        path=entry,
        source=meta.get("source") if isinstance(meta.get("source"), str) else None,
        kind=meta.get("kind") if isinstance(meta.get("kind"), str) else None,
        size_bytes=sum(p.stat().st_size for p in files),
        modified=datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M"),
        problem=problem,
    )
