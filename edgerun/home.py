"""Where edgerun keeps its cache, and how it writes files and directories atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.errors import EdgerunError


def home() -> Path:
    """The edgerun home directory: $EDGERUN_HOME, else ~/.cache/edgerun (not created here)."""
    env = os.environ.get("EDGERUN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgerun"


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) or raise a one-line error that says how to fix it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise EdgerunError(
            f"cannot write to {path}: {exc.strerror or exc}",
            "set EDGERUN_HOME to a writable directory",
        ) from exc
    return path


def models_dir() -> Path:
    """The directory of pulled model checkpoints, created on demand."""
    return ensure_dir(home() / "models")


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it into place only if the block completes.

    On any exception (Ctrl-C included) the temporary directory is removed, so nothing that looks
    complete is left behind. With `overwrite`, an existing `final` is replaced at the very end.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise EdgerunError(f"{final} already exists", "pass --overwrite to replace it")
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON atomically (see atomic_write_text)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing or holds no object.

    Raises EdgerunError when the file is not valid UTF-8 JSON (a damaged artifact)."""
    from edgerun.untrusted import read_json

    if not path.is_file():
        return {}
    data = read_json(path, "re-export the artifact")
    return data if isinstance(data, dict) else {}
