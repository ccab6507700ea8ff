"""The Fisher sensitivity of the budget recipes (q4-mixed), computed one decoder layer at a time.

The same estimate as edgerun.exporters.onnx.sensitivity.fisher_sensitivity (one backward pass per
calibration window of the log-likelihood of tokens sampled from the model, squared gradients
times each weight's 4-bit error), but the checkpoint runs from its safetensors through
edgerun.exporters.stream: each layer's weights are loaded for its forward and dropped after, and
the backward pass recomputes each layer (loading it again) when it reaches it, so memory holds one
layer's weights and gradients, the head's, and each window's layer inputs, never the model with
its gradients (10 bytes per parameter: 16 GB for a 1.5B model).

A tied head's gradient comes in two tensors (the head and the embedding are loaded apart): they
are summed before squaring, as the whole model's one tensor gets them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.exporters.onnx.sensitivity import FisherSums, Group, fisher_passes, torch_groups


def streamed_fisher(
    path: Path,
    nodes: list[str],
    windows: list[np.ndarray],
    block_size: int,
    symmetric: bool,
    detail: Callable[[str], None] | None = None,
) -> list[Group]:
    """The graph's projection groups (sensitivity.torch_groups) of the checkpoint at `path`, with
    their Fisher sensitivity on `windows`; `detail(str)` shows per-layer progress."""
    from edgerun.exporters.stream import StreamedModel

    with StreamedModel(path, on_unit=detail) as streamed:
        groups = torch_groups(streamed.model, nodes)
        sums = FisherSums(groups, block_size, symmetric)
        streamed.on_load = _hooks(streamed, groups, sums)
        with streamed.checkpointed():
            tokens = fisher_passes(streamed.model, windows, sums.window)
        streamed.on_load = None
    sums.finish(groups, tokens)
    return groups


def _hooks(streamed: Any, groups: list[Group], sums: FisherSums) -> Callable[[str, str, Any], None]:
    """The StreamedModel.on_load callback: a group's weight, and each tied alias of it, is loaded
    wanting a gradient, with the group's hook on it (the parts summed under the weight's name)."""
    names = {id(m): n for n, m in streamed.model.named_modules()}
    wanted: dict[str, tuple[Group, str, int]] = {}
    for group in groups:
        for module in group.modules:
            name = f"{names[id(module)]}.weight"
            aliases = streamed.names_of(name)
            for alias in aliases:
                wanted[alias] = (group, name, len(aliases))

    def on_load(name: str, key: str, param: Any) -> None:
        if name in wanted:
            group, weight, parts = wanted[name]
            param.requires_grad_(True)
            # the hook holds a detached view, not the Parameter: a Parameter referenced by its
            # own hook is a reference cycle, so every layer's weight and its .grad stayed alive
            # until the cycle collector ran (0.40B Qwen2.5-0.5B shape: 7.81 GiB peak, 3.99 GiB
            # estimated)
            param.register_hook(sums.hook(group, weight, param.detach(), parts))
            param.register_post_accumulate_grad_hook(_drop_grad)  # the hook has used it

    return on_load


def _drop_grad(param: Any) -> None:
    """Free a weight's accumulated gradient as soon as it lands (the Fisher hook has read it)."""
    param.grad = None
