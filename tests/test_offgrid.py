"""The off-grid reference's grid measures (benchmarks/offgrid.py): a Q4_1-dequantized block is on
the grid, noise of one step takes it off, and the residual reads 0 on the grid and ~0.25 spread."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.offgrid import grid_residual, grid_share


def _q4_1(rng: np.random.Generator, blocks: int) -> np.ndarray:
    """Weights as a Q4_1 GGUF dequantizes them: d * q + m, the block's min and max on the grid."""
    q = rng.integers(0, 16, size=(blocks, 32)).astype(np.float64)
    q[:, 0], q[:, 1] = 0, 15  # Q4_1 maps each block's min to 0 and max to 15
    d = rng.uniform(0.001, 0.02, size=(blocks, 1))
    m = rng.normal(0, 0.05, size=(blocks, 1))
    return (d * q + m).astype(np.float32)


def test_dequantized_q4_1_blocks_are_on_the_grid_and_noise_takes_them_off() -> None:
    rng = np.random.default_rng(0)
    weights = _q4_1(rng, 400)
    assert grid_share(weights) == 1.0
    assert grid_residual(weights, weights) == pytest.approx(0.0, abs=1e-3)
    blocks = weights.reshape(-1, 32).astype(np.float64)
    step = (blocks.max(1, keepdims=True) - blocks.min(1, keepdims=True)) / 15
    noised = (blocks + (rng.random(blocks.shape) - 0.5) * step).astype(np.float32)
    assert grid_share(noised) < 0.01
    assert grid_residual(weights, noised) == pytest.approx(0.25, abs=0.02)


def test_gaussian_weights_are_not_on_a_grid() -> None:
    rng = np.random.default_rng(1)
    assert grid_share(rng.normal(size=(64, 32)).astype(np.float32)) == 0.0


def test_a_coarser_grid_within_the_block_still_counts() -> None:
    """A block whose values use only every third level of a 4-bit range is still a grid."""
    block = (np.arange(32) % 6 * 3 * 0.01 + 0.2).astype(np.float32)
    assert grid_share(block) == 1.0
