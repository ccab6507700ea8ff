"""Temporary directories that outlive their process, and how edgerun avoids and removes them.

Every temporary directory edgerun makes next to a result (an in-progress cache entry or artifact,
an export's scratch directory) carries its owner in its name: a short tag of the host and the
process id. Two things keep them from piling up:

- `terminate_as_interrupt` turns SIGTERM/SIGHUP into an exception inside the CLI, so the
  `finally`/`except BaseException` cleanup that already runs on Ctrl-C runs on `kill` too;
- `sweep_stale` removes the ones a SIGKILL, a power cut or a crash left behind: those whose
  owning process (on this host) is gone, and any older than a day.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

#: A leftover with no live owner on this host is removed at once; any leftover this old is too.
MAX_AGE_S = 24 * 3600
SCRATCH_PREFIX = ".edgerun-scratch-"
# `.<name>.tmp-<tag>.<random>` (atomic_dir, downloads) and `.<name>.old-...` (atomic_dir's swap);
# the owner tag `<host>.<pid>.` is absent from names made before edgerun recorded it.
_OWNED = r"(?:(?P<host>[0-9a-f]{6})\.(?P<pid>\d{1,10})\.)?"
_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-" + _OWNED + r"[0-9a-z_]{8}$")
_SCRATCH_NAME = re.compile(r"^" + re.escape(SCRATCH_PREFIX) + _OWNED + r"[0-9a-z_]+$")


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def owner_tag() -> str:
    """`<host>.<pid>`: what a temporary name records about the process that made it."""
    return f"{_host_tag()}.{os.getpid()}"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised like Ctrl-C so the same cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Within the block, `signals` raise `Terminated` in the main thread instead of killing it.

    Only signals left at their default action are taken over (so `nohup` still ignores SIGHUP).
    The first signal restores the previous handlers, so a second one kills at once even while
    cleanup runs; `sweep_stale` removes what that leaves. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, object] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        previous.clear()

    def handler(signum: int, frame: FrameType | None) -> None:
        restore()
        raise Terminated(signum)

    for signum in signals:
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        restore()


def _owner_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, OSError):
        return False
    return True


def _last_change(path: Path) -> float:
    """Newest mtime of `path` and its direct entries: a long download still touches its file."""
    newest = path.lstat().st_mtime
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def stale_reason(path: Path, max_age_s: float = MAX_AGE_S, now: float | None = None) -> str | None:
    """Why the temporary directory `path` is a leftover to remove, or None to keep it.

    Names that are not edgerun temporary directories are always kept."""
    match = _TEMP_NAME.match(path.name) or _SCRATCH_NAME.match(path.name)
    if match is None or path.is_symlink() or not path.is_dir():
        return None
    if match["pid"] is not None and match["host"] == _host_tag():
        pid = int(match["pid"])
        if pid == os.getpid():
            return None
        if not _owner_alive(pid):
            return f"its process {pid} is gone"
    try:
        age = (time.time() if now is None else now) - _last_change(path)
    except OSError:
        return None
    return f"unchanged for {age / 3600:.0f} h" if age > max_age_s else None


def sweep_stale(directory: Path, max_age_s: float = MAX_AGE_S) -> list[Path]:
    """Remove the leftover temporary directories directly inside `directory`; return them.

    Safe to call at any start: a missing directory, entries another process removes first and
    entries that cannot be removed are skipped silently (logged at debug level)."""
    removed: list[Path] = []
    try:
        candidates = [Path(e.path) for e in os.scandir(directory) if e.name.startswith(".")]
    except OSError:
        return removed
    for path in candidates:
        reason = stale_reason(path, max_age_s)
        if reason is None:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log.info("removed leftover %s (%s)", path, reason)
            removed.append(path)
        else:
            log.debug("could not remove leftover %s", path)
    return removed
