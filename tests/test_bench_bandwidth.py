"""The STREAM-style bandwidth probe and the roofline (edgerun.bench.bandwidth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.bench import bandwidth


def _cache(root: Path, index: int, size: str) -> None:
    (root / f"index{index}").mkdir(parents=True)
    (root / f"index{index}" / "size").write_text(size + "\n")


def test_last_level_cache_and_stream_sized_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index, size in enumerate(["48K", "32K", "1024K", "32768K"]):
        _cache(tmp_path, index, size)
    assert bandwidth.last_level_cache_bytes(tmp_path) == 32 * 2**20
    assert bandwidth.last_level_cache_bytes(tmp_path / "none") is None
    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert bandwidth.default_array_mib() == 256  # 4 x 32 MiB is less than the floor
    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: 96 * 2**20)
    assert bandwidth.default_array_mib() == 384  # 4 x LLC
    monkeypatch.setattr(bandwidth, "last_level_cache_bytes", lambda: None)
    assert bandwidth.default_array_mib() == 256


def test_stream_copy_and_triad() -> None:
    probe = bandwidth.stream(threads=2, array_mib=8, reps=2)
    assert probe["threads"] == 2 and probe["array_mib"] == 8
    assert len(probe["samples"]["copy"]) == len(probe["samples"]["triad"]) == 2
    assert probe["copy_gb_s"] == max(probe["samples"]["copy"]) > 0
    assert probe["triad_gb_s"] == max(probe["samples"]["triad"]) > 0
    assert probe["gb_s"] == max(probe["copy_gb_s"], probe["triad_gb_s"])
    assert probe["method"].startswith("STREAM copy/triad, 2 threads over 3 x 8 MiB")


def test_triad_computes_a_equals_b_plus_s_c() -> None:
    import numpy as np

    n = bandwidth.BLOCK * 2 + 5  # more than one block, and a ragged last one
    a, b, c = np.zeros(n), np.arange(n, dtype=float), np.full(n, 2.0)
    bandwidth._triad(a, b, c, 3.0)
    np.testing.assert_array_equal(a, b + 6.0)


def test_roofline() -> None:
    assert bandwidth.roofline_tok_s(10.0, 50_000_000) == pytest.approx(200.0)
    assert bandwidth.roofline_tok_s(None, 50_000_000) is None
    assert bandwidth.roofline_tok_s(10.0, None) is None
