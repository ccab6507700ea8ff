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
        streamed.on_load, handles = _hooks(streamed, groups, sums)
        try:
            with streamed.checkpointed():
                tokens = fisher_passes(streamed.model, windows, sums.window)
        finally:
            streamed.on_load = None
            for handle in handles:
                handle.remove()
    sums.finish(groups, tokens)
    return groups


def _hooks(
    streamed: Any, groups: list[Group], sums: FisherSums
) -> tuple[Callable[[str, str, Any], None], list[Any]]:
    """The StreamedModel.on_load callback, and the module hooks to remove after the pass: a
    group's weight, and each tied alias of it, is loaded wanting a gradient, with the group's
    hook on it (the parts summed under the weight's name); a tied plain nn.Embedding gives its
    part from its output's gradient instead (_embedding_part)."""
    import torch

    names = {id(m): n for n, m in streamed.model.named_modules()}
    wanted: dict[str, tuple[Group, str, int]] = {}
    handles = []
    for group in groups:
        for module in group.modules:
            name = f"{names[id(module)]}.weight"
            aliases = streamed.names_of(name)
            for alias in aliases:
                owner = streamed.model.get_submodule(alias.rpartition(".")[0])
                if len(aliases) > 1 and _plain_embedding(owner, torch):
                    part = _embedding_part(sums, group, name, len(aliases))
                    handles.append(owner.register_forward_hook(part, prepend=True))
                else:
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

    return on_load, handles


def _plain_embedding(module: Any, torch: Any) -> bool:
    """An nn.Embedding whose weight gradient is the sum of its output's gradient per token (not
    a subclass that scales its output, not max_norm, not sparse)."""
    return type(module) is torch.nn.Embedding and module.max_norm is None and not module.sparse


def _embedding_part(sums: FisherSums, group: Group, key: str, parts: int) -> Callable[..., Any]:
    """A forward hook (run before StreamedModel's, which unloads the weight) on a tied
    embedding: its output becomes a leaf wanting a gradient, whose hook gives FisherSums the
    embedding's part of the tied weight's gradient, the window's rows only. The embedding's
    weight then wants no gradient, so autograd does not keep it (vocabulary x hidden fp32: 0.93
    GB on the Qwen2.5-1.5B shape) alive through the whole backward pass, nor build the dense,
    mostly-zero gradient of it (as much again)."""

    def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        import torch

        ids = args[0].detach().reshape(-1).numpy().astype(np.int64)
        values = module.weight.detach()[torch.from_numpy(np.unique(ids))].numpy()
        leaf = output.detach().requires_grad_(True)
        pad = module.padding_idx
        leaf.register_hook(lambda grad: sums.rows_part(group, key, ids, grad, values, parts, pad))
        return leaf

    return hook


def _drop_grad(param: Any) -> None:
    """Free a weight's accumulated gradient as soon as it lands (the Fisher hook has read it)."""
    param.grad = None
