"""The q4-mixed Fisher sensitivity computed layer by layer (weights streamed from the checkpoint,
each layer recomputed in the backward pass) equals the whole model's, tied heads included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_untied", "tiny_qwen2"])
def test_streamed_fisher_equals_the_whole_model(name: str, request: pytest.FixtureRequest) -> None:
    import torch

    from edgerun.exporters.onnx import sensitivity as sens
    from edgerun.exporters.onnx.fisher_stream import streamed_fisher
    from edgerun.exporters.reference import load_model

    path: Path = request.getfixturevalue(name)
    model = load_model(path)
    nodes = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    rng = np.random.default_rng(0)
    windows = [rng.integers(5, model.config.vocab_size, size=24).astype(np.int64) for _ in range(3)]
    whole = sens.torch_groups(model, nodes)
    sens.fisher_sensitivity(model, windows, whole, 32, False)
    units: list[str] = []
    streamed = streamed_fisher(path, nodes, windows, 32, False, units.append)
    want = {g.role.key: g.sensitivity for g in whole}
    got = {g.role.key: g.sensitivity for g in streamed}
    assert set(got) == set(want) and "lm_head" in got
    assert all(v > 0 for v in want.values())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key
    # every layer ran twice per window (forward, then recomputed by the backward pass)
    layers = model.config.num_hidden_layers
    assert sum(u.startswith("layer ") for u in units) == 2 * layers * len(windows)


def test_streamed_fisher_frees_each_layer_without_the_cycle_collector(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every weight the pass loads is gone when it returns, with the cycle collector off: a hook
    holding its own Parameter kept every layer's weight and gradient alive until gc ran (the
    0.40B shape's Fisher stage peaked at 7.81 GiB against 3.99 GiB estimated)."""
    import gc
    import weakref

    import torch

    from edgerun.exporters import stream
    from edgerun.exporters.onnx.fisher_stream import streamed_fisher

    loaded: list[weakref.ref[torch.nn.Parameter]] = []
    original = stream.StreamedModel.load

    def load(self: stream.StreamedModel, module: object) -> None:
        original(self, module)
        loaded.extend(weakref.ref(p) for p in module.parameters(recurse=True))  # type: ignore[attr-defined]

    monkeypatch.setattr(stream.StreamedModel, "load", load)
    monkeypatch.setattr(stream, "give_back_memory", lambda collect=True: None)
    rng = np.random.default_rng(0)
    windows = [rng.integers(5, 100, size=24).astype(np.int64) for _ in range(2)]
    nodes = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]
    gc.collect()
    gc.disable()
    try:
        groups = streamed_fisher(tiny_llama, nodes, windows, 32, False)
        alive = [ref() for ref in loaded if ref() is not None and not ref().is_meta]  # type: ignore[union-attr]
    finally:
        gc.enable()
    assert groups and all((g.sensitivity or 0) > 0 for g in groups)
    assert loaded
    assert alive == [], f"{len(alive)} of {len(loaded)} loaded weights outlived the pass"


def test_a_tied_heads_two_gradient_parts_keep_only_the_windows_rows() -> None:
    """sum((head + embedding)^2 * dW^2) from the parts as they arrive, holding the window's rows
    of the first part only (not a vocabulary-sized gradient through the backward pass)."""
    import torch

    from edgerun.exporters.onnx import sensitivity as sens

    rng = np.random.default_rng(1)
    vocab, hidden = 300, 64
    weight = torch.from_numpy(rng.standard_normal((vocab, hidden)).astype(np.float32))
    ids = np.array([5, 17, 17, 250, 3])
    head = torch.from_numpy(rng.standard_normal((vocab, hidden)).astype(np.float32))
    embedding = torch.zeros(vocab, hidden)
    embedding[torch.from_numpy(np.unique(ids))] = torch.randn(
        4, hidden, generator=torch.Generator().manual_seed(0)
    )
    group = sens.Group(role=None, modules=[], params=vocab * hidden)  # type: ignore[arg-type]
    want = sens.fisher_error(weight.numpy(), head + embedding, 4, 32, False)
    for first, second in ((head, embedding), (embedding, head)):
        sums = sens.FisherSums([group], 32, False)
        sums.window(ids)
        hook = sums.hook(group, "w", weight, parts=2)
        hook(first)
        kept = [t for _, t in sums._parts.values()]
        assert [tuple(t.shape) for t in kept] == [(4, hidden)]
        hook(second)
        assert sums.totals[id(group)] == pytest.approx(want, rel=1e-9)


def test_a_tied_embedding_is_freed_before_the_heads_gradient_arrives(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tied embedding gives its part of the head's gradient from its output's gradient, so
    its loaded fp32 weight wants no gradient and is gone once its forward ends: a weight wanting
    one was kept alive by autograd through the whole backward pass (vocabulary x hidden fp32,
    0.93 GB on the Qwen2.5-1.5B shape, beside the head's own weight and gradient)."""
    import gc
    import weakref

    import torch

    from edgerun.exporters import stream
    from edgerun.exporters.onnx import sensitivity as sens
    from edgerun.exporters.onnx.fisher_stream import streamed_fisher

    embeddings: list[weakref.ref[torch.nn.Parameter]] = []
    original_load = stream.StreamedModel.load

    def load(self: stream.StreamedModel, module: object) -> None:
        original_load(self, module)
        if isinstance(module, torch.nn.Embedding):
            embeddings.append(weakref.ref(module.weight))

    seen: list[bool] = []  # at each gradient of the head: whether an embedding weight is alive
    original_hook = sens.FisherSums.hook

    def hook(self: sens.FisherSums, *args: object, **kw: object) -> object:
        inner = original_hook(self, *args, **kw)  # type: ignore[arg-type]

        def on_grad(grad: object) -> None:
            seen.append(any(ref() is not None for ref in embeddings))
            inner(grad)

        return on_grad

    monkeypatch.setattr(stream.StreamedModel, "load", load)
    monkeypatch.setattr(sens.FisherSums, "hook", hook)
    monkeypatch.setattr(stream, "give_back_memory", lambda collect=True: None)
    rng = np.random.default_rng(0)
    windows = [rng.integers(5, 100, size=24).astype(np.int64) for _ in range(2)]
    gc.collect()
    gc.disable()
    try:
        groups = streamed_fisher(tiny_llama, ["lm_head"], windows, 32, False)
    finally:
        gc.enable()
    assert [g.role.key for g in groups] == ["lm_head"] and (groups[0].sensitivity or 0) > 0
    assert len(embeddings) == len(windows)  # the embedding was loaded (apart) for each window
    assert seen and not any(seen), f"an embedding weight was alive at {sum(seen)} gradients"
