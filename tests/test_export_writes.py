"""Export and the output directory: refused before any work when it cannot be written, a full disk
reported as a full disk (per format, nothing half-written), leftovers of killed exports swept."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from edgerun.core.errors import EdgerunError
from edgerun.exporters import onnx as onnx_family
from edgerun.exporters.pipeline import export
from edgerun.exporters.validate import Thresholds

LOOSE = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)


def test_an_unwritable_output_is_refused_before_the_source_is_read(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EdgerunError, match=r"cannot write to .*a-file/out: .* is not a directory"):
        export("no-such-source", "onnx-int4", blocker / "out", progress=False)


def test_a_full_disk_is_reported_as_one_and_leaves_nothing(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr(onnx_family.files, "save_model", full)
    (result,) = export(
        str(tiny_llama), "onnx-int4", tmp_path, eval_text=short_eval_text, thresholds=LOOSE,
        builder="optimum", recipe="q4-pure", progress=False,
    )  # fmt: skip
    assert not result.written
    assert result.reason.startswith(f"no space left on {tmp_path} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_export_are_swept_from_the_output(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    dead = tmp_path / ".edgerun-scratch-abcdefgh"  # made before owners were recorded
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"partial")
    two_days_ago = dead.stat().st_mtime - 2 * 86400
    for path in (dead / "model.onnx", dead):
        os.utime(path, (two_days_ago, two_days_ago))
    keep = tmp_path / ".mine"
    keep.mkdir()
    (result,) = export(
        str(tiny_llama), "onnx-fp32", tmp_path, eval_text=short_eval_text, thresholds=LOOSE,
        builder="optimum", progress=False, probe=False,
    )  # fmt: skip
    assert result.written
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine", "onnx-fp32"]
