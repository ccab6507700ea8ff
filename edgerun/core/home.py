"""Where edgerun keeps its cache, and how it writes files and directories atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.leftovers import SCRATCH_PREFIX, owner_tag, sweep_stale

_swept: set[Path] = set()


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
        raise describe_os_error(exc, path, "set EDGERUN_HOME to a writable directory") from exc
    return path


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(directory: Path) -> None:
    """Raise EdgerunError unless files can be created in `directory`, or, when it does not exist
    yet, in its nearest existing parent (where it would be created). Nothing is left behind.

    Call it before expensive work whose result goes to `directory`; it does not create it."""
    directory = Path(directory)
    where = _existing_ancestor(directory)
    if not where.is_dir():
        raise EdgerunError(
            f"cannot write to {directory}: {where} is not a directory",
            "choose another output directory",
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgerun-write-test-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise describe_os_error(exc, directory) from exc


#: errno values that can only come from writing, whichever file an OSError names.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def write_errors_reported(directory: Path) -> Iterator[None]:
    """Within the block, an OSError from writing under `directory` (full disk, quota, read-only
    file system, or a permission error on a file inside it) becomes describe_os_error's one line.
    Other OSErrors pass through unchanged."""
    try:
        yield
    except OSError as exc:
        inside = exc.filename is None or Path(os.fsdecode(exc.filename)).is_relative_to(directory)
        if exc.errno in _WRITE_ERRNOS or (exc.errno in (errno.EACCES, errno.EPERM) and inside):
            raise describe_os_error(exc, directory) from exc
        raise


def _free_mb(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(_existing_ancestor(path)).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def describe_os_error(exc: OSError, path: Path | str, hint: str | None = None) -> EdgerunError:
    """The one-line EdgerunError for an OSError met while writing to `path` (return it, then
    `raise ... from exc`): a full disk or quota names the free space, a permission or read-only
    file system says so. `hint` replaces the default fix."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left" if code == errno.ENOSPC else "disk quota exceeded"
        return EdgerunError(
            f"{what} on {path} ({_free_mb(Path(path))})",
            hint or "free some space, or write to another disk",
        )
    if code in (errno.EACCES, errno.EPERM):
        problem = "permission denied"
    elif code == errno.EROFS:
        problem = "read-only file system"
    else:
        problem = exc.strerror or str(exc)
    return EdgerunError(
        f"cannot write to {path}: {problem}", hint or "choose a directory you can write to"
    )


def cache_dir(name: str) -> Path:
    """`$EDGERUN_HOME/<name>`, created on demand; the first use in a process also removes the
    leftovers of interrupted or killed runs in it (see edgerun.core.leftovers.sweep_stale)."""
    path = ensure_dir(home() / name)
    if path not in _swept:
        _swept.add(path)
        sweep_stale(path)
    return path


def models_dir() -> Path:
    """The directory of pulled model checkpoints, created on demand (and swept of leftovers)."""
    return cache_dir("models")


def make_scratch_dir(parent: Path) -> Path:
    """A new `.edgerun-scratch-*` directory in `parent` whose name records this process, so
    `sweep_stale(parent)` can tell a live export's scratch from a killed one's."""
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{owner_tag()}.", dir=parent))


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it into place only if the block completes.

    On any exception (Ctrl-C included, and SIGTERM under the CLI) the temporary directory is
    removed, so nothing that looks complete is left behind. With `overwrite`, an existing `final`
    is replaced at the very end. The name records this process for `sweep_stale` (SIGKILL).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{owner_tag()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise EdgerunError(f"{final} already exists", "pass --overwrite to replace it")
            old = final.parent / f".{final.name}.old-{owner_tag()}.{uuid.uuid4().hex[:8]}"
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
    from edgerun.core.untrusted import read_json

    if not path.is_file():
        return {}
    data = read_json(path, "re-export the artifact")
    return data if isinstance(data, dict) else {}
