"""Per-projection sensitivity from an importance matrix, gathered one decoder layer at a time.

The importance matrix: for every decoder projection (a torch Linear), the mean square of each
input column over the calibration text, read by forward hooks while the checkpoint runs layer
by layer from its safetensors (edgerun.exporters.stream): no stage holds the whole model, and no
backward pass runs. While a layer's weights are loaded, the error of onnxruntime's own 4-bit
quantizer is taken per input column (sum over outputs of dW^2). A projection's sensitivity is
the expected squared error of its output, sum_j E[x_j^2] * sum_i dW_ij^2 (the diagonal of the
output-error estimate that GPTQ and llama.cpp's imatrix use), summed over a group's modules.
The statistics are saved in the export's scratch directory (imatrix.npz: module name -> mean
square per input column) for whatever else wants them (weighted rounding, GGUF's imatrix).

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
from edgerun.exporters.onnx.sensitivity import Group, column_error, torch_groups

IMATRIX_FILE = "imatrix.npz"
SENSITIVITY = "imatrix-weighted 4-bit error, sum_j E[x_j^2] * sum_i dW_ij^2"


class _Stats:
    """Running sums of one Linear's input squares, and its 4-bit error per input column."""

    def __init__(self, block_size: int, symmetric: bool) -> None:
        self.block_size, self.symmetric = block_size, symmetric
        self.sum_sq: np.ndarray | None = None
        self.rows = 0
        self.col_error: np.ndarray | None = None

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        sq = (x * x).sum(0).numpy()
        self.sum_sq = sq if self.sum_sq is None else self.sum_sq + sq
        self.rows += x.shape[0]
        if self.col_error is None:  # the weights are loaded now: take the error once
            w = module.weight.detach().numpy()
            self.col_error = column_error(w, 4, self.block_size, self.symmetric)

    @property
    def mean_sq(self) -> np.ndarray:
        assert self.sum_sq is not None
        return self.sum_sq / max(self.rows, 1)

    def sensitivity(self) -> float:
        if self.sum_sq is None or self.col_error is None:
            return 0.0  # never ran on the calibration text (an unrouted expert)
        return float((self.mean_sq * self.col_error).sum())


def imatrix_sensitivity(
    path: Path,
    nodes: list[str],
    windows: list[np.ndarray],
    block_size: int,
    symmetric: bool,
    scratch: Path,
    detail: Callable[[str], None] | None = None,
) -> list[Group]:
    """The graph's projection groups (see sensitivity.torch_groups) of the checkpoint at `path`
    with their sensitivity set from the importance matrix on `windows`; the matrix is saved as
    scratch/imatrix.npz. `detail(str)` shows per-layer progress."""
    from edgerun.exporters.stream import StreamedModel

    with StreamedModel(path, on_unit=detail) as streamed:
        groups = torch_groups(streamed.model, nodes)
        stats: dict[int, _Stats] = {}
        handles = []
        for group in groups:
            for module in group.modules:
                stats[id(module)] = _Stats(block_size, symmetric)
                handles.append(module.register_forward_hook(stats[id(module)]))
        try:
            hidden = streamed.hidden_states(windows)
            with streamed.pinned(streamed.head_modules()):
                for ids, state in zip(windows, hidden, strict=True):
                    streamed.logits(ids, state)
        finally:
            for handle in handles:
                handle.remove()
        names = {id(m): n for n, m in streamed.model.named_modules()}
    for group in groups:
        group.sensitivity = sum(stats[id(m)].sensitivity() for m in group.modules)
    matrix = {names[key]: s.mean_sq.astype(np.float32) for key, s in stats.items() if s.rows}
    np.savez(scratch / IMATRIX_FILE, **matrix)  # type: ignore[arg-type]  # numpy's stub
    return groups
