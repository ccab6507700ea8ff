"""Calibrated rounding (GPTQ) for MatMulNBits: same layout and kernel, each code chosen knowing
the input's second moments, so the error one column's rounding leaves is pushed onto the columns
not yet rounded.

For a weight W [N, K] (output rows, input columns) and the calibration inputs' second-moment
matrix H = X^T X / tokens [K, K] (edgerun.exporters.importance gathers it layer by layer, one
matrix per distinct linear input), GPTQ (Frantar et al., 2022) rounds column k, then moves its
error e_k = (w_k - q_k) / U_kk onto columns j > k by  W_j -= e_k U_kj, with U the upper Cholesky
factor of H^-1 (damped by DAMP x its mean diagonal). That minimises tr((W - Q) H (W - Q)^T), the
error of the layer's output on the calibration inputs, not each weight's own error as RTN does.

Each block of `block_size` input columns keeps its own scale (and integer zero point), chosen
when GPTQ reaches the block's first column from the weights as updated so far, by the importance-
weighted search of edgerun.exporters.onnx.weighted (importance = diag(H), the mean square of each
input column: the statistics that module weights with). With a diagonal H nothing moves and the
result is weighted.quantize's, byte for byte (with steps=0: onnxruntime's RTN; tested). Codes, scales and zero points then go into
MatMulNBits' layout exactly as weighted.quantize writes them.

Measured (benchmarks/README.md, "Fidelity"): the default onnx-int4 of SmolLM2-135M's demo
checkpoint, mean KL 0.100 with the weighted search alone, 0.071 with GPTQ, same bits per weight;
output error 0.11 of RTN's over its 151 MatMuls.

Why the earlier attempt failed (KL 0.929 against RTN's 0.376, benchmarks/README.md): onnxruntime's
GPTQ port ran symmetric, on 4 x 256 tokens, with its own scale per group computed once from the
unupdated weights; with H that small-sample it overfits. Here H comes from every calibration
token, is damped, and the scales follow the updated weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgerun.exporters.onnx.weighted import STEPS, Blocks, _codes, _pack, _search

# added to H's diagonal, times its mean diagonal (GPTQ's percdamp). 0.01 (GPTQ's own default)
# overfits the calibration text here: SmolLM2-135M off grid, the Fisher plan at 6.1 bits per
# weight, held-out mean KL 0.0844 / 0.0797 / 0.0731 / 0.0709 / 0.0739 at 0.001 / 0.01 / 0.1 / 0.3
# / 1.0 (benchmarks/README.md, "Fidelity"; as damping grows GPTQ tends to the weighted search)
DAMP = 0.3
BAND_VALUES = 8 << 20  # float64 values of D per product in output_error (64 MB)
LAZY = 128  # columns per lazy batch update (a multiple of every block size used: 16, 32, 64)


def _inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of (H + damping)^-1, float64; dead columns (never active) get 1."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1: H^-1 = L^-T L^-1
    hinv = inv.T @ inv
    return np.linalg.cholesky(hinv).T


def quantize(
    weight_kn: np.ndarray,
    gram: np.ndarray,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = False,
    steps: int = STEPS,
) -> Blocks:
    """Quantize a MatMul weight [K, N] to MatMulNBits' layout by GPTQ with second moments
    `gram` [K, K] (X^T X / tokens of the weight's input). Scales per block of `block_size`
    input columns come from the importance-weighted search (`steps`: its grid; 0: RTN's scale
    of the updated block). Raises ValueError on a shape mismatch or other bits than 4 / 8.

    BLAS runs single-threaded here: its calls are small (a [K, K] Cholesky and inverse, rank-
    block_size updates), and OpenBLAS's threads contend with the export's others. Measured on
    the 2-core machine, a 1,536 x 1,536 float64 Cholesky took 0.085 s on one thread and 1.74 s
    on two with the machine busy, and one 1,536 x 576 weight 1.0 s against 17 s."""
    with _one_blas_thread():
        return _quantize(weight_kn, gram, bits, block_size, symmetric, steps)


def _one_blas_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _quantize(
    weight_kn: np.ndarray,
    gram: np.ndarray,
    bits: int,
    block_size: int,
    symmetric: bool,
    steps: int,
) -> Blocks:
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits GPTQ supports 4 or 8 bits, not {bits}")
    k, n = weight_kn.shape
    if gram.shape != (k, k) or LAZY % block_size:
        raise ValueError(f"GPTQ needs a [{k}, {k}] matrix and a block size dividing {LAZY}")
    n_blocks = -(-k // block_size)
    pad = n_blocks * block_size - k
    w = np.pad(np.asarray(weight_kn, dtype=np.float32).T, ((0, 0), (0, pad)))
    sigma2 = (w * w).mean(-1, keepdims=True)  # weighted.quantize's, from the original row
    g = np.zeros((k + pad, k + pad))
    g[:k, :k] = gram
    g[k:, k:] = np.eye(pad)  # padded columns: zero weights, independent, no error to move
    imp = np.maximum(np.diag(g), 0).astype(np.float32)
    imp[k:] = 0
    dead = np.diag(g) <= 0
    w[:, dead] = 0
    u = _inverse_factor(g).astype(np.float32)
    codes = np.empty((n, n_blocks, block_size), dtype=np.uint8)
    scales = np.empty((n, n_blocks), dtype=np.float32)
    zeros = np.empty((n, n_blocks), dtype=np.uint8)
    # Errors move lazily at two levels: a rounded column's error onto the rest of its block
    # at once (the next column's rounding needs it), the block's errors onto the rest of the
    # LAZY batch by one product when the block ends, the batch's onto every later column when
    # it ends. The same updates as one column at a time over the whole batch, summed in another
    # order; the per-column work is then block_size wide instead of LAZY (1.2x on 135M's
    # matrices with BLAS on one thread).
    for start in range(0, k + pad, LAZY):
        end = min(start + LAZY, k + pad)
        part, errors = w[:, start:end].copy(), np.zeros((n, end - start), np.float32)
        for first in range(0, end - start, block_size):
            last = first + block_size
            b = (start + first) // block_size
            x = np.asfortranarray(part[:, first:last])  # weighted.quantize's layout
            weights = imp[start + first : start + last] * np.sqrt(sigma2 + x * x)
            _, s, z = _search(x[:, None], weights[:, None], bits, symmetric, steps)
            scales[:, b], zeros[:, b] = s[:, 0], z[:, 0]
            s, z = scales[:, b], zeros[:, b].astype(np.float32)
            for j in range(first, last):
                col = start + j
                q = _codes(part[:, j : j + 1], s, z, bits)[:, 0]  # MLAS's rounding of a column
                codes[:, b, j - first] = q.astype(np.uint8)
                err = (part[:, j] - (q - z) * s) / u[col, col]
                part[:, j + 1 : last] -= np.outer(err, u[col, col + 1 : start + last])
                errors[:, j] = err
            part[:, last:] -= (
                errors[:, first:last] @ u[start + first : start + last, start + last : end]
            )
        w[:, end:] -= errors @ u[start:end, end:]
    return Blocks(_pack(codes, bits), scales, _pack(zeros, bits, pad=8))


def output_error(weight_kn: np.ndarray, dequant_kn: np.ndarray, gram: np.ndarray) -> float:
    """tr(D^T H D), D = dequant - weight: the mean squared error of the layer's output on the
    calibration inputs (summed over output columns) that GPTQ minimises. (H D) by BLAS, a band
    of output columns (~64 MB of float64) at a time: einsum's three-operand form runs its K^2 N
    multiply-adds outside BLAS."""
    h = np.asarray(gram, np.float64)
    k, n = np.shape(weight_kn)
    step = max(1, BAND_VALUES // max(k, 1))
    total = 0.0
    with _one_blas_thread():
        for start in range(0, n, step):
            band = slice(start, start + step)
            d = np.asarray(dequant_kn[:, band], np.float64) - np.asarray(
                weight_kn[:, band], np.float64
            )
            total += float(np.sum(d * (h @ d)))
    return total
