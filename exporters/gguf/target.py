"""`--target-kl` / `--target-ppl-ratio` for GGUF: the file type's tensors raised to q8_0, the most
sensitive first, until the calibration text meets the target.

1. Quantize with the requested type (and the importance matrix when it is used).
2. Sensitivity of each tensor as llama.cpp wrote it: sum_j E[x_j^2] * sum_i (W_ij - Q(W)_ij)^2
   (the importance matrix times the real quantization error, gguf-py dequantizing the written
   blocks), ranked per extra byte that q8_0 would cost.
3. Bisect (sensitivity.search_k) on how many of the ranked tensors go to q8_0 for the smallest
   set whose KL (or PPL ratio) on the calibration text, llama.cpp's logits against the fp32
   reference computed layer by layer, is within the ONNX search's MARGIN of the target.
4. The export writes those overrides through llama.cpp's tt_overrides, checks the written types
   in the GGUF header, and validates on the evaluation text with the target as the gate (the
   manifest's quant.recipe.target, as for onnx-int4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.exporters.formats import ExportContext
from edgerun.exporters.gguf.imatrix import exact

RAISED = "q8_0"
RAISED_BITS = 8.5  # q8_0: 32 int8 codes and an fp16 scale per block


def ranked_tensors(
    written: Path, source: Path, importance: dict[str, np.ndarray]
) -> list[tuple[str, float, float]]:
    """(GGUF tensor name, sensitivity, extra bytes at q8_0) of every tensor of `written` below
    q8_0's bits that has an importance vector, most sensitive per extra byte first; `source` is
    the float GGUF it was quantized from."""
    import gguf

    src = {t.name: t for t in gguf.GGUFReader(source).tensors}
    ranked = []
    for tensor in gguf.GGUFReader(written).tensors:
        imp = importance.get(tensor.name)
        block, size = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
        bits = size * 8 / block
        if imp is None or bits >= RAISED_BITS or tensor.name not in src:
            continue
        weight = np.asarray(src[tensor.name].data, dtype=np.float32).reshape(-1, imp.shape[0])
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        error = np.square(values - weight, dtype=np.float64).sum(0)
        extra = weight.size * (RAISED_BITS - bits) / 8
        ranked.append((tensor.name, float((imp * error).sum()), extra))
    ranked.sort(key=lambda r: r[1] / r[2], reverse=True)
    return ranked


def search_types(
    ctx: ExportContext,
    kind: str,
    source: Path,
    imatrix: dict[str, np.ndarray] | None,
    importance: dict[str, np.ndarray],
    detail: Callable[[str], None] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """(tensor-type overrides, the manifest's quant.recipe) of the smallest set of tensors raised
    to q8_0 for which `kind` meets the options' target on the calibration text; `importance`:
    GGUF tensor name -> importance vector. EdgerunError when even every tensor raised misses."""
    from edgerun.exporters.gguf.quantize import quantize
    from edgerun.exporters.gguf.runtime import logits_fn
    from edgerun.exporters.onnx import target as onnx_target
    from edgerun.exporters.onnx.sensitivity import search_k
    from edgerun.exporters.reference import streamed_reference

    opts = ctx.options
    metric, _, aim = onnx_target.aim_of(opts)
    window = onnx_target.WINDOW
    work = ctx.scratch / f"gguf-target-{kind}"
    work.mkdir(exist_ok=True)
    ids = [int(t) for t in onnx_target.calibration_ids(ctx)[: window * onnx_target.SEARCH_WINDOWS]]
    reference = streamed_reference(ctx.reference.path, ids, "calibration", window, work, detail)
    probe = work / "probe.gguf"
    quantize(source, probe, kind, opts.threads, imatrix, None, opts.extra)
    ranked = ranked_tensors(probe, source, importance)

    def overrides(k: int) -> dict[str, str]:
        return {exact(name): RAISED for name, _, _ in ranked[:k]}

    def measure(k: int) -> float:
        if detail is not None:
            detail(f"{k} of {len(ranked)} tensors at {RAISED}")
        quantize(source, probe, kind, opts.threads, imatrix, overrides(k) or None, opts.extra)
        scored = reference.score(logits_fn(probe, opts.threads))
        return scored.mean_kl if metric == "kl" else scored.ppl_ratio

    k, probes = search_k(measure, len(ranked), aim)
    probe.unlink(missing_ok=True)
    if k is None:
        most = f"with every tensor of gguf-{kind} at {RAISED}"
        raise onnx_target.out_of_reach(opts, probes, most, "gguf-q8_0")
    calibration = {
        "tokens": len(ids),
        "sensitivity": "imatrix-weighted error of the written blocks, per extra byte",
        "tensors_raised": k,
        "tensors": len(ranked),
    }
    what = f"gguf-{kind}, its most sensitive tensors raised to {RAISED} until"
    record = onnx_target.target_record(opts, what, calibration, probes)
    record["raised"] = [name for name, _, _ in ranked[:k]]
    return overrides(k), record
