"""Which ONNX Runtime graph optimisation levels give the same optimized graph for one model.

The level only chooses which graph transformers run before the kernels are created: BASIC
(constant folding, redundant-node elimination), EXTENDED (operator fusions) and ALL (EXTENDED plus
layout transformers for convolutions). Two levels that leave a model's graph byte for byte the
same run the same kernels on the same nodes, so `edgerun tune` measures one of them, not both.
For onnxruntime-genai's decoder graphs, already fused at export, ALL and EXTENDED are identical:
SmolLM2-135M onnx-int4 has 309 nodes at both, and BASIC differs only in leaving 30 SiLU
activations as Sigmoid + Mul instead of QuickGelu.

How: a session is created at each level with onnxruntime's ``optimized_model_filepath``, which
serializes the graph after the transformers ran; weights of 1 KiB or more go to an external data
file that is a link to the null device, so nothing the size of the model is written. Prepacking is
off and one thread is used: only the graph is wanted. The serialized graphs are compared by digest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from edgerun.core.errors import EdgerunError, first_line

_DATA = "weights.bin"  # a link to the null device: the weights are read, never written anywhere


def optimized_digest(model_file: Path, level: str) -> str:
    """sha256 of the graph onnxruntime optimizes `model_file` into at `level` (a
    GraphOptimizationLevel name), its large initializers referred to, not included. Raises
    EdgerunError when onnxruntime cannot load or serialize it."""
    import onnx
    import onnxruntime as ort

    from edgerun.backends.ort_prepacked import save_optimized

    try:
        value = getattr(ort.GraphOptimizationLevel, level)
    except AttributeError:
        raise EdgerunError(f"unknown graph optimisation level '{level}'") from None
    with tempfile.TemporaryDirectory(prefix="edgerun-levels-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = value
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3  # ALL warns that its graph may hold hardware-specific nodes
        save_optimized(opts, out, _DATA)
        opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            os.symlink(os.devnull, Path(tmp) / _DATA)
            session = ort.InferenceSession(
                str(model_file), opts, providers=["CPUExecutionProvider"]
            )
            del session
            graph = onnx.load(str(out), load_external_data=False).graph
        except Exception as exc:  # onnxruntime's and onnx's own exception types, OSError
            raise EdgerunError(
                f"cannot optimize {model_file.name} at {level}: {first_line(exc)}"
            ) from exc
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def same_as(model_file: Path, levels: list[str]) -> dict[str, str]:
    """{level: the first level of `levels` with the same optimized graph} for every level whose
    graph equals an earlier one's ({} when all differ). Raises EdgerunError as optimized_digest."""
    first: dict[str, str] = {}
    same: dict[str, str] = {}
    for level in levels:
        digest = optimized_digest(model_file, level)
        if digest in first:
            same[level] = first[digest]
        else:
            first[digest] = level
    return same
