"""Per-projection sensitivity from the importance matrix, gathered one decoder layer at a time.

The importance matrix (edgerun.exporters.importance: for every linear layer, the mean square of
each input column over the calibration text, read by forward hooks while the checkpoint runs
layer by layer from its safetensors; no stage holds the whole model, and no backward pass runs).
While a layer's weights are loaded, the error of onnxruntime's own 4-bit quantizer is taken per
input column (sum over outputs of dW^2). A projection's sensitivity is the expected squared error
of its output, sum_j E[x_j^2] * sum_i dW_ij^2 (the diagonal of the output-error estimate that
GPTQ and llama.cpp's imatrix use), summed over a group's modules. The statistics measured on the
way are the export's importance matrix (weighted rounding, GGUF's imatrix reuse them).

It stands in for the Fisher estimate (a backward pass over the whole fp32 model per window, 8
bytes per parameter for weights and gradients) only where that does not fit the call's memory:
on SmolLM2-135M the plan it picks for q4-mixed scored mean KL 0.237 against Fisher's 0.162
(benchmarks/README.md, "Scale").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.exporters.importance import measure
from edgerun.exporters.onnx.sensitivity import Group, column_error, torch_groups

SENSITIVITY = "imatrix-weighted 4-bit error, sum_j E[x_j^2] * sum_i dW_ij^2"


def imatrix_sensitivity(
    path: Path,
    nodes: list[str],
    windows: list[np.ndarray],
    block_size: int,
    symmetric: bool,
    detail: Callable[[str], None] | None = None,
) -> tuple[list[Group], dict[str, np.ndarray], int]:
    """(the graph's projection groups (see sensitivity.torch_groups) of the checkpoint at `path`
    with their sensitivity set from the importance matrix on `windows`, that matrix (module name
    -> mean square per input column), its tokens). `detail(str)` shows per-layer progress."""
    from edgerun.exporters.stream import StreamedModel

    with StreamedModel(path, on_unit=detail) as streamed:
        groups = torch_groups(streamed.model, nodes)
        names = {id(m): n for n, m in streamed.model.named_modules()}
        wanted = {names[id(m)] for g in groups for m in g.modules}

        def error(name: str, weight: np.ndarray) -> Any:
            return column_error(weight, 4, block_size, symmetric) if name in wanted else None

        values, errors, tokens = measure(streamed, windows, error)
    for group in groups:  # a module that never ran (an unrouted expert) adds nothing
        group.sensitivity = sum(
            float((values[n] * errors[n]).sum()) for n in map(names.get, map(id, group.modules))
            if n in values
        )  # fmt: skip
    return groups, values, tokens
