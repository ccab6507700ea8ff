"""GPTQ rounding for MatMulNBits: the weighted search's bytes where nothing can move (diagonal
second moments), a lower output error where inputs correlate, the gatherer's second moments,
and the streamed export's use of them."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.exporters.onnx import gptq, weighted


def _weight(k: int = 96, n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = (rng.normal(size=(k, n)) * 0.05).astype(np.float32)
    weight[:32, 0] = np.abs(weight[:32, 0])  # an all-positive block: the zero point clamps
    weight[32:64, 1] = 0.0  # an all-zero block: scale 0
    return weight


def _same(a: weighted.Blocks, b: weighted.Blocks) -> bool:
    pairs = zip(
        (a.packed, a.scales, a.zero_points), (b.packed, b.scales, b.zero_points), strict=True
    )
    return all(np.array_equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("k", [96, 80])  # 80: a padded last block
@pytest.mark.parametrize("symmetric", [False, True])
def test_uncorrelated_inputs_give_the_weighted_search_or_rtn_bytes(k, symmetric):
    """With a diagonal H no error has anywhere to go: GPTQ is the importance-weighted search
    with importance diag(H), and with steps=0 onnxruntime's RTN (weighted.quantize's steps=0)."""
    weight = _weight(k)
    imp = np.random.default_rng(1).uniform(0.1, 3.0, size=k).astype(np.float32)
    rtn = weighted.quantize(weight, imp, 4, 32, symmetric, steps=0)
    assert _same(gptq.quantize(weight, np.diag(imp), 4, 32, symmetric, steps=0), rtn)
    ours = gptq.quantize(weight, np.diag(imp), 4, 32, symmetric)
    search = weighted.quantize(weight, imp, 4, 32, symmetric)
    assert np.array_equal(ours.packed, search.packed)
    assert np.array_equal(ours.zero_points, search.zero_points)
    # the same search over one block at a time: numpy sums a differently shaped (strided) array
    # in another order, so a refit scale may differ in its last places (never a code)
    np.testing.assert_array_max_ulp(ours.scales, search.scales, maxulp=8)
    if not symmetric:
        assert np.array_equal(ours.scales, search.scales)


def test_correlated_inputs_lower_the_output_error_below_the_weighted_search():
    """Inputs whose neighbouring columns correlate (as activations do): GPTQ's output error
    tr(D^T H D) is well below the weighted search's and RTN's, codes in range, the kernel's
    layout (dequantize reads it back)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 96))
    x[:, 1:] += 0.9 * x[:, :-1]
    x[:, 5] *= 6.0  # one outlier column
    h = x.T @ x / len(x)
    weight = _weight()
    imp = np.diag(h).astype(np.float32)
    errors = {}
    for name, blocks in {
        "rtn": weighted.quantize(weight, imp, 4, 32, False, steps=0),
        "weighted": weighted.quantize(weight, imp, 4, 32, False),
        "gptq": gptq.quantize(weight, h, 4, 32, False),
    }.items():
        assert blocks.packed.shape == (40, 3, 16) and blocks.zero_points.shape == (40, 2)
        errors[name] = gptq.output_error(weight, weighted.dequantize(blocks, 96, 4, 32), h)
    assert errors["weighted"] < errors["rtn"]
    assert errors["gptq"] < 0.8 * errors["weighted"], errors


def _eager_gptq(weight: np.ndarray, h: np.ndarray, block: int = 32) -> np.ndarray:
    """GPTQ as the paper states it, every column's error moved onto all later columns at once
    (no lazy batches), asymmetric 4-bit: the codes [N, K]."""
    from edgerun.exporters.onnx.weighted import _codes, _search

    k, n = weight.shape
    w = weight.T.astype(np.float32).copy()
    sigma2 = (w * w).mean(-1, keepdims=True)
    u = gptq._inverse_factor(h).astype(np.float32)
    imp = np.diag(h).astype(np.float32)
    codes = np.empty((n, k), np.uint8)
    for col in range(k):
        if col % block == 0:
            x = np.asfortranarray(w[:, col : col + block])
            weights = imp[col : col + block] * np.sqrt(sigma2 + x * x)
            _, s, z = _search(x[:, None], weights[:, None], 4, False, 9)
            s, z = s[:, 0], z[:, 0].astype(np.float32)
        q = _codes(w[:, col : col + 1], s, z, 4)[:, 0]
        codes[:, col] = q
        err = (w[:, col] - (q - z) * s) / u[col, col]
        w[:, col:] -= np.outer(err, u[col, col:])
    return codes


def test_the_lazy_updates_equal_the_eager_algorithm():
    """The two-level lazy updates (within a block at once, across the batch per block, beyond
    it per batch) are the eager algorithm's updates summed in another order: the same codes
    but where float rounding breaks a tie."""
    from edgerun.exporters.onnx.sensitivity import _unpack

    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 256))
    x[:, 1:] += 0.8 * x[:, :-1]
    h = x.T @ x / len(x)
    weight = (rng.normal(size=(256, 48)) * 0.05).astype(np.float32)
    lazy = _unpack(gptq.quantize(weight, h, 4, 32, False).packed, 4).reshape(48, -1)
    eager = _eager_gptq(weight, h)
    assert (lazy == eager).mean() > 0.999, (lazy != eager).sum()


def test_the_output_error_is_the_trace_in_bands(monkeypatch):
    """output_error, a band of output columns at a time through BLAS, is tr(D^T H D)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 48))
    h = x.T @ x / len(x)
    weight = rng.normal(size=(48, 70)).astype(np.float32)
    dequant = (weight + rng.normal(size=weight.shape) * 0.01).astype(np.float32)
    d = dequant.astype(np.float64) - weight
    want = float(np.trace(d.T @ h @ d))
    monkeypatch.setattr(gptq, "BAND_VALUES", 48 * 16)  # bands of 16 columns, the last of 6
    assert gptq.output_error(weight, dequant, h) == pytest.approx(want, rel=1e-12)


def test_wrong_shapes_and_widths_are_refused():
    weight = _weight()
    with pytest.raises(ValueError, match="96, 96"):
        gptq.quantize(weight, np.eye(64), 4, 32, False)
    with pytest.raises(ValueError, match="4 or 8"):
        gptq.quantize(weight, np.eye(96), 3, 32, False)


torch = pytest.importorskip("torch")


def test_the_gatherer_measures_second_moments_once_per_distinct_input(tmp_path):
    """importance.measure's `grams`: X^T X / tokens of each linear's input, equal to hooks on
    the whole fp32 model; k / v / up share q's / gate's matrix and are not stored twice."""
    from edgerun.exporters import importance
    from edgerun.exporters.formats import ReferenceModel
    from edgerun.exporters.stream import StreamedModel
    from tests.tiny_models import build_tiny_model

    path = build_tiny_model("llama", tmp_path / "llama")
    ids = (np.arange(300, dtype=np.int64) * 7) % 300
    windows = [ids[:160], ids[160:]]
    grams: dict[str, np.ndarray] = {}
    with StreamedModel(path) as streamed:
        values, _, _ = importance.measure(streamed, windows, grams=grams)
    assert "model.layers.0.self_attn.k_proj" in values
    assert "model.layers.0.self_attn.k_proj" not in grams
    assert importance.gram_key("model.layers.0.mlp.up_proj") == "model.layers.0.mlp.gate_proj"
    model = ReferenceModel(path).model
    seen: dict[str, np.ndarray] = {}
    module = dict(model.named_modules())["model.layers.1.mlp.down_proj"]
    handle = module.register_forward_hook(
        lambda m, a, o: seen.setdefault("x", []).append(a[0].reshape(-1, a[0].shape[-1]))
    )
    with torch.inference_mode():
        for w in windows:
            model(input_ids=torch.from_numpy(w[None, :]), use_cache=False)
    handle.remove()
    x = torch.cat(seen["x"]).double().numpy()
    expected = x.T @ x / len(x)
    got = grams["model.layers.1.mlp.down_proj"]
    assert got.shape == (128, 128)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.allclose(np.diag(got), values["model.layers.1.mlp.down_proj"], rtol=1e-4)


def test_streamed_int4_export_with_gptq_records_it_and_lowers_the_output_error(
    tiny_llama, tmp_path
):
    pytest.importorskip("onnxruntime_genai")
    from edgerun.exporters.pipeline import export

    def run(name: str, **opts):
        (result,) = export(
            str(tiny_llama), "onnx-int4", tmp_path / name, progress=False, probe=False,
            recipe="q4-pure", builder="genai", no_validate=True, **opts,
        )  # fmt: skip
        assert result.written, result.reason
        return result

    plain, ours = run("weighted", gptq=False), run("gptq", gptq=True)
    note = ours.manifest["quant"]["importance"]["rounding"]
    assert note["nodes_gptq"] == note["nodes"] > 0 and note["nodes_rtn"] == 0
    assert note["output_error_vs_rtn"] < 1.0
    assert plain.manifest["quant"]["importance"]["rounding"]["nodes_gptq"] == 0
    data = [(r.path / "model.onnx_data").read_bytes() for r in (plain, ours)]
    assert len(data[0]) == len(data[1]) and data[0] != data[1]  # same layout, other codes


def test_gptq_without_the_statistics_is_one_line(tiny_llama, tmp_path):
    from edgerun.core.errors import EdgerunError
    from edgerun.exporters.pipeline import export

    with pytest.raises(EdgerunError, match="--gptq"):
        export(
            str(tiny_llama), "onnx-int4", tmp_path / "x", progress=False, probe=False,
            gptq=True, imatrix=False,
        )  # fmt: skip
