"""Run an exported ONNX decoder in onnxruntime (CPU EP) to get logits for validation: one forward
pass over a window with an empty KV cache. Works for optimum's graphs and onnxruntime-genai's
(same input names: input_ids, attention_mask, [position_ids], past_key_values.N.key/value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError
from edgerun.exporters.validate import LogitsFn

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def onnx_logits_fn(model_path: Path, threads: int | None = None) -> LogitsFn:
    """A LogitsFn running `model_path` in onnxruntime on the CPU execution provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgerunError(
            f"onnxruntime cannot load {model_path}: {first[:300]}",
            "the graph builder made a graph this onnxruntime rejects: export with the other"
            " builder (--builder optimum or genai), or use another onnxruntime version",
        ) from exc
    inputs = session.get_inputs()

    def logits(ids: np.ndarray) -> np.ndarray:
        feeds = {i.name: _feed(i, ids) for i in inputs}
        try:
            out = session.run(["logits"], feeds)[0]
        except Exception as exc:  # onnxruntime's own Fail / InvalidArgument types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgerunError(
                f"onnxruntime cannot run {model_path}: {first[:300]}",
                "try --builder optimum (the other graph builder) for this architecture",
            ) from exc
        return np.asarray(out[0], dtype=np.float32)

    return logits


def _feed(arg: Any, ids: np.ndarray) -> np.ndarray:
    """The value of one graph input for a single window with no past."""
    n = len(ids)
    dtype = _NP_TYPES.get(arg.type)
    if dtype is None:
        raise EdgerunError(f"unsupported ONNX input type {arg.type} for '{arg.name}'")
    if arg.name == "input_ids":
        return ids[None, :].astype(dtype)
    if arg.name == "attention_mask":
        return np.ones((1, n), dtype=dtype)
    if arg.name == "position_ids":
        return np.arange(n, dtype=dtype)[None, :]
    if arg.name.startswith("past_key_values"):
        # [batch, kv_heads, past_len, head_dim]: symbolic batch -> 1, symbolic past -> 0
        shape = [d if isinstance(d, int) else (1 if i == 0 else 0) for i, d in enumerate(arg.shape)]
        return np.zeros(shape, dtype=dtype)
    raise EdgerunError(
        f"the ONNX graph has an input '{arg.name}' that edgerun does not know how to feed",
        "export with edgerun (optimum or onnxruntime-genai builder)",
    )
