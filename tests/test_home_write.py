"""Issue 13, item 5 (write side): check_writable before expensive work, and one-line errors for a
full disk, a permission problem or a read-only file system (describe_os_error)."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pytest

from edgerun.core.errors import EdgerunError
from edgerun.core.home import check_writable, describe_os_error, write_errors_reported


def test_writable_directory_and_one_to_be_created(tmp_path: Path) -> None:
    check_writable(tmp_path)
    check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []  # neither created nor littered with a probe


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgerunError) as info:
        check_writable(tmp_path / "file" / "out")
    assert str(info.value) == (
        f"cannot write to {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is not a directory "
        "(choose another output directory)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_directory_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(EdgerunError) as info:
        check_writable(locked / "out")
    assert str(info.value) == (
        f"cannot write to {locked / 'out'}: permission denied (choose a directory you can write to)"
    )


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EACCES, "cannot write to {p}: permission denied"),
        (errno.EPERM, "cannot write to {p}: permission denied"),
        (errno.EROFS, "cannot write to {p}: read-only file system"),
    ],
)
def test_permission_and_read_only_refusals_of_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, message: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / ".edgerun-write-test-x"))

    monkeypatch.setattr("edgerun.core.home.tempfile.mkstemp", refuse)
    with pytest.raises(EdgerunError) as info:
        check_writable(tmp_path)
    assert str(info.value) == message.format(p=tmp_path) + " (choose a directory you can write to)"


def test_full_disk_names_the_free_space(tmp_path: Path) -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    err = describe_os_error(exc, tmp_path / "not-yet" / "out")
    free = shutil.disk_usage(tmp_path).free / 2**20
    match = re.fullmatch(
        rf"no space left on {re.escape(str(tmp_path / 'not-yet' / 'out'))} \((\d+) MiB free\) "
        r"\(free some space, or write to another disk\)",
        str(err),
    )
    assert match and abs(int(match[1]) - free) < 1000, str(err)
    quota = describe_os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert str(quota).startswith(f"disk quota exceeded on {tmp_path} (")


def test_other_errors_keep_their_text_and_take_a_hint(tmp_path: Path) -> None:
    err = describe_os_error(OSError(errno.ENOTDIR, "Not a directory"), tmp_path, "set X")
    assert str(err) == f"cannot write to {tmp_path}: Not a directory (set X)"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_real_full_device_becomes_one_line() -> None:
    with (
        pytest.raises(EdgerunError) as info,
        write_errors_reported(Path("/dev")),
        open("/dev/full", "wb") as fh,
    ):
        fh.write(b"x" * 100)
        fh.flush()
    assert str(info.value).startswith("no space left on /dev (")


def test_read_errors_outside_the_directory_pass_through(tmp_path: Path) -> None:
    outside = OSError(errno.EACCES, "Permission denied", "/etc/shadow-like")
    with pytest.raises(OSError) as info, write_errors_reported(tmp_path):
        raise outside
    assert info.value is outside
    with pytest.raises(EdgerunError), write_errors_reported(tmp_path):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "model.onnx"))
