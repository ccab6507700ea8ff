"""Importance-weighted rounding for MatMulNBits: same layout, same kernels, better blocks.

onnxruntime's RTN quantizer takes each block's scale from its range (symmetric: the
largest-magnitude value maps to -2^(bits-1); asymmetric: [min(0, min), max(0, max)] over 2^bits
- 1 steps, with an integer zero point). Here each block's scale (and integer zero point) is
searched instead: a small grid of candidate scales around the RTN one, each followed by a
weighted least-squares refit of the scale (and of the zero point, rounded back to an integer),
keeping the candidate with the least  sum_k w_k (W_k - dequant(q_k))^2  where w_k is the
importance of input column k (edgerun.exporters.importance) times sqrt(sigma^2 + W_k^2), as
ggml's make_qx_quants / make_qkx quantizers weight an imatrix. The RTN candidate is always in
the grid, so the weighted error is never above RTN's. With the grid reduced to the RTN scale
(`steps=0`) the bytes are onnxruntime's own, bit for bit (tested).

Output is MatMulNBits' layout: B uint8 [N, n_blocks, block_size * bits / 8] (low nibble
first), scales float32 [N, n_blocks], zero points uint8 [N, ceil(n_blocks * bits / 8)]; all
numpy, vectorised over every block of a chunk of output rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STEPS = 9  # candidate scales: RTN x nmax / (nmax + 0.1 * i) for i in -STEPS..STEPS (ggml's grid)
CHUNK = 1 << 21  # weights per vectorised chunk (x the grid: bounded temporary memory)


@dataclass(frozen=True)
class Blocks:
    """One weight quantized to MatMulNBits: packed codes, scales and zero points."""

    packed: np.ndarray  # uint8 [N, n_blocks, blob]
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray  # uint8 [N, ceil(n_blocks * bits / 8)] (8s / 128s when symmetric)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C's roundf (half away from zero), exactly, in float32."""
    whole = np.trunc(x)
    return whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0).astype(x.dtype)


def _rtn_params(
    x: np.ndarray, bits: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """onnxruntime's (MLAS BlockwiseQuantizer) scale and zero point of blocks x [..., block],
    and the block's clamped range (lo <= 0 <= hi) the asymmetric grid starts from."""
    one = np.float32(1)
    top = (1 << bits) - 1
    lo = np.minimum(x.min(-1), 0).astype(np.float32)
    hi = np.maximum(x.max(-1), 0).astype(np.float32)
    if symmetric:
        idx = np.abs(x).argmax(-1)[..., None]
        signed = np.take_along_axis(x, idx, -1)[..., 0]
        scale = (signed / np.float32(-(1 << (bits - 1)))).astype(np.float32)
        zero = np.full(scale.shape, 1 << (bits - 1), dtype=np.float32)
        return scale, zero, lo, hi
    scale = ((hi - lo) / np.float32(top)).astype(np.float32)
    safe = np.where(scale != 0, scale, one)
    zp_f = np.where(scale != 0, np.float32(0) - lo / safe, lo)
    zero = np.clip(_roundf(zp_f.astype(np.float32)), 0, top).astype(np.float32)
    return scale, zero, lo, hi


def _codes(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, exact: bool = True
) -> np.ndarray:
    """MLAS's rounding: clamp(roundf(x * (1 / scale) + zp), 0, 2^bits - 1), in float32
    (exact: C's roundf; else np.rint, which differs only at exact halves: fine for a search)."""
    safe = np.where(scale != 0, scale, np.float32(1))
    recip = np.where(scale != 0, np.float32(1) / safe, np.float32(0)).astype(np.float32)
    v = (x * recip[..., None]).astype(np.float32) + zero[..., None]
    rounded = _roundf(v) if exact else np.rint(v)
    return np.clip(rounded, 0, (1 << bits) - 1).astype(np.float32)


def _refit(
    x: np.ndarray, w: np.ndarray, q: np.ndarray, zero: np.ndarray, bits: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares for fixed codes: the scale (zero point fixed) when symmetric;
    scale and offset, the offset then rounded to an integer zero point and the scale refit,
    when asymmetric."""
    top = (1 << bits) - 1
    if not symmetric:
        sw, sq = w.sum(-1), (w * q).sum(-1)
        sqq, sx, sqx = (w * q * q).sum(-1), (w * x).sum(-1), (w * q * x).sum(-1)
        det = sw * sqq - sq * sq
        ok = det > 0
        d = np.where(ok, det, 1)
        s = np.where(ok, (sw * sqx - sq * sx) / d, 0)
        m = np.where(ok, (sqq * sx - sq * sqx) / d, 0)
        safe = np.where(s > 0, s, 1)
        zero = np.where(s > 0, np.clip(np.rint(-m / safe), 0, top), zero).astype(np.float32)
    c = q - zero[..., None]
    num, den = (w * c * x).sum(-1), (w * c * c).sum(-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0).astype(np.float32), zero


def _error(
    x: np.ndarray, w: np.ndarray, q: np.ndarray, scale: np.ndarray, zero: np.ndarray
) -> np.ndarray:
    d = x - (q - zero[..., None]) * scale[..., None]
    return (w * d * d).sum(-1)


def _search(
    x: np.ndarray, w: np.ndarray, bits: int, symmetric: bool, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scales, zero points) of blocks x [..., block] with weights w [..., block]."""
    scale, zero, lo, hi = _rtn_params(x, bits, symmetric)
    best_q = _codes(x, scale, zero, bits)
    best_s, best_z = scale, zero
    best_e = _error(x, w, best_q, scale, zero)
    nmax = float(1 << (bits - 1)) if symmetric else float((1 << bits) - 1)
    for i in [i for i in range(-steps, steps + 1) if i] if steps else []:
        s = (scale * np.float32(nmax / (nmax + 0.1 * i))).astype(np.float32)
        z = zero
        if not symmetric:
            safe = np.where(s != 0, s, np.float32(1))
            z = np.clip(np.rint(-lo / safe), 0, (1 << bits) - 1).astype(np.float32)
        q = _codes(x, s, z, bits, exact=False)
        s, z = _refit(x, w, q, z, bits, symmetric)
        q = _codes(x, s, z, bits, exact=False)  # re-round on the refit grid, then score that
        e = _error(x, w, q, s, z)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_s, best_z = np.where(better, s, best_s), np.where(better, z, best_z)
        best_q = np.where(better[..., None], q, best_q)
    return best_q, best_s.astype(np.float32), best_z


def quantize(
    weight_kn: np.ndarray,
    importance: np.ndarray | None,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    steps: int = STEPS,
) -> Blocks:
    """Quantize a MatMul weight [K, N] to MatMulNBits' layout with importance-weighted rounding.

    importance: [K] mean square of the input columns (None: uniform). steps: grid half-width
    (0: onnxruntime's RTN, bit for bit)."""
    if bits not in (4, 8):
        raise ValueError(f"MatMulNBits weighted rounding supports 4 or 8 bits, not {bits}")
    k, n = weight_kn.shape
    n_blocks = -(-k // block_size)
    pad = n_blocks * block_size - k
    x_all = np.pad(np.asarray(weight_kn, dtype=np.float32).T, ((0, 0), (0, pad)))
    imp = np.ones(k, np.float32) if importance is None else np.asarray(importance, np.float32)
    imp = np.pad(np.maximum(imp, 0), (0, pad))  # padding has no weight
    codes = np.empty((n, n_blocks, block_size), dtype=np.uint8)
    scales = np.empty((n, n_blocks), dtype=np.float32)
    zeros = np.empty((n, n_blocks), dtype=np.uint8)
    rows = max(1, CHUNK // max(k, 1))
    for r in range(0, n, rows):
        x = x_all[r : r + rows]
        sigma2 = (x * x).mean(-1, keepdims=True)
        w = imp[None, :] * np.sqrt(sigma2 + x * x)
        shape = (x.shape[0], n_blocks, block_size)
        q, s, z = _search(x.reshape(shape), w.reshape(shape), bits, symmetric, steps)
        codes[r : r + rows], scales[r : r + rows], zeros[r : r + rows] = q, s, z
    # an odd block count: onnxruntime fills the last zero-point byte's high nibble with 8
    return Blocks(_pack(codes, bits), scales, _pack(zeros, bits, pad=8))


def _pack(values: np.ndarray, bits: int, pad: int = 0) -> np.ndarray:
    """uint8 values -> MatMulNBits bytes along the last axis (4 bits: low nibble first, an odd
    count padded with a `pad` nibble)."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.full(values.shape[:-1] + (1,), pad, np.uint8)], -1)
    return (values[..., 0::2] & 0x0F) | (values[..., 1::2] << 4)


def dequantize(blocks: Blocks, k: int, bits: int, block_size: int) -> np.ndarray:
    """The float32 weight [K, N] the MatMulNBits kernel computes with."""
    from edgerun.exporters.onnx.sensitivity import _unpack

    n, n_blocks = blocks.scales.shape
    q = _unpack(blocks.packed, bits).reshape(n, n_blocks, block_size).astype(np.float32)
    zero = _unpack(blocks.zero_points, bits)[:, :n_blocks].astype(np.float32)
    values = (q - zero[..., None]) * blocks.scales[..., None]
    return np.ascontiguousarray(values.reshape(n, -1)[:, :k].T)


def fp32_weights(fp32: Path) -> Callable[[str], np.ndarray | None]:
    """A reader of the fp32 graph's MatMul weights [K, N] by node name, one tensor at a time
    (external data read per tensor); an lm_head fed by Transpose(initializer) is transposed."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(fp32), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    nodes = {n.name: n for n in graph.node if n.op_type == "MatMul"}
    base = str(Path(fp32).parent)

    def read(name: str) -> np.ndarray | None:
        node = nodes.get(name)
        if node is None:
            return None
        if node.input[1] in inits:
            return np.asarray(numpy_helper.to_array(inits[node.input[1]], base), np.float32)
        producer = producers.get(node.input[1])
        if producer is not None and producer.op_type == "Transpose" and producer.input[0] in inits:
            return np.asarray(numpy_helper.to_array(inits[producer.input[0]], base), np.float32).T
        return None

    return read
