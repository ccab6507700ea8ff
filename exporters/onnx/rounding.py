"""Weighted rounding over a whole export, counted: the Tally every node's rounding goes through
(the importance-weighted search of edgerun.exporters.onnx.weighted, or GPTQ's calibrated rounding
of edgerun.exporters.onnx.gptq where the input's second moments were gathered), its manifest
note, and re-rounding a quantized graph in place (the fp32-graph export path)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from edgerun.exporters.onnx import gptq
from edgerun.exporters.onnx.weighted import STEPS, Blocks, dequantize, quantize

BAND_BYTES = 64 << 20  # fp32 weight bytes quantized at a time by Tally (see Tally._banded)


class Tally:
    """Weighted rounding of one export's nodes, and its manifest note: nodes re-rounded, nodes
    left at RTN (no statistics), importance-weighted squared error against RTN's."""

    def __init__(self, steps: int = STEPS) -> None:
        self.steps, self.nodes, self.nodes_rtn, self.nodes_gptq = steps, 0, 0, 0
        self.err_rtn = self.err_new = 0.0
        self.out_rtn = self.out_new = 0.0  # GPTQ nodes: output error tr(D^T H D)

    def quantize(
        self,
        weight_kn: np.ndarray,
        imp: np.ndarray,
        bits: int,
        block_size: int,
        symmetric: bool,
        gram: np.ndarray | None = None,
    ) -> Blocks:
        """`quantize` with importance `imp`, counted (and its error against RTN's added); with
        the input's second moments `gram` [K, K], GPTQ's (edgerun.exporters.onnx.gptq) instead,
        its output error against RTN's added too."""
        self.nodes += 1
        if gram is None:
            return self._banded(weight_kn, imp, bits, block_size, symmetric)
        new = gptq.quantize(weight_kn, gram, bits, block_size, symmetric, self.steps)
        rtn = quantize(weight_kn, imp, bits, block_size, symmetric, 0)
        self.err_rtn += _weighted_error(weight_kn, imp, rtn, bits, block_size)
        self.err_new += _weighted_error(weight_kn, imp, new, bits, block_size)
        k = weight_kn.shape[0]
        self.out_rtn += gptq.output_error(weight_kn, dequantize(rtn, k, bits, block_size), gram)
        self.out_new += gptq.output_error(weight_kn, dequantize(new, k, bits, block_size), gram)
        self.nodes_gptq += 1
        return new

    def _banded(
        self, weight_kn: np.ndarray, imp: np.ndarray, bits: int, block_size: int, symmetric: bool
    ) -> Blocks:
        """The weighted search a band of output columns at a time: the same codes and zero points,
        since every block lies within one column (a scale can differ where two candidates nearly
        tie, as with the search's own row chunks: numpy's SIMD sums depend on the buffer's
        alignment; 1 block in 32,000 in the test, 1.4e-5 apart), and the temporaries (padded
        copy, RTN for the tally, dequantized errors) stay near BAND_BYTES (the Qwen2.5-1.5B
        shape's 151,936 x 1,536 head whole took the write stage to 7.33 GiB, 2.8x its
        estimate)."""
        k, n = weight_kn.shape
        step = max(1, BAND_BYTES // max(4 * k, 1))
        parts: list[Blocks] = []
        for start in range(0, n, step):
            band = weight_kn[:, start : start + step]
            new = quantize(band, imp, bits, block_size, symmetric, self.steps)
            rtn = quantize(band, imp, bits, block_size, symmetric, 0)
            self.err_rtn += _weighted_error(band, imp, rtn, bits, block_size)
            self.err_new += _weighted_error(band, imp, new, bits, block_size)
            parts.append(new)
        if len(parts) == 1:
            return parts[0]
        return Blocks(
            np.concatenate([b.packed for b in parts]),
            np.concatenate([b.scales for b in parts]),
            np.concatenate([b.zero_points for b in parts]),
        )

    def note(self) -> dict[str, Any]:
        """The manifest's note: method, node counts, errors relative to RTN's."""
        gptq = (
            "GPTQ over the calibration inputs' second moments, block scales by "
            if (self.nodes_gptq)
            else ""
        )
        return {
            "method": gptq + "importance-weighted scale search (ggml make_qx_quants style)",
            "grid_steps": self.steps,
            "nodes": self.nodes,
            "nodes_rtn": self.nodes_rtn,
            "nodes_gptq": self.nodes_gptq,
            "weighted_error_vs_rtn": (
                round(self.err_new / self.err_rtn, 4) if self.err_rtn else None
            ),
            "output_error_vs_rtn": round(self.out_new / self.out_rtn, 4) if self.out_rtn else None,
        }


def reround(
    model: Any,
    weights: Callable[[str], np.ndarray | None],
    importance: Callable[[str], np.ndarray | None],
    steps: int = STEPS,
) -> dict[str, Any]:
    """Recompute B, scales and zero points of every MatMulNBits node of `model` (in place) from
    its fp32 weight and its input columns' importance; nodes lacking either keep onnxruntime's
    RTN bytes. Returns the manifest note (Tally.note). The streamed export rounds the same way
    as it writes (edgerun.exporters.onnx.lazyquant); this serves exports from the fp32 graph."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    tally = Tally(steps)
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        name = re.sub(r"_Q\d+$", "", node.name)
        attrs = {a.name: a.i for a in node.attribute}
        weight, imp = weights(name), importance(name)
        if weight is None or imp is None or imp.shape[0] != attrs["K"]:
            tally.nodes_rtn += 1
            continue
        symmetric = len(node.input) < 4 or not node.input[3]
        new = tally.quantize(weight, imp, attrs["bits"], attrs["block_size"], symmetric)
        arrays = [new.packed, new.scales] + ([] if symmetric else [new.zero_points])
        for tensor_name, array in zip(node.input[1:], arrays, strict=False):
            old = inits[tensor_name]
            fresh = numpy_helper.from_array(array.reshape(tuple(old.dims)), tensor_name)
            old.CopyFrom(fresh)
    return tally.note()


def _weighted_error(
    weight: np.ndarray, imp: np.ndarray, blocks: Blocks, bits: int, block_size: int
) -> float:
    d = dequantize(blocks, weight.shape[0], bits, block_size) - weight
    return float((imp[:, None] * d * d).sum())
