"""Importance-weighted rounding for MatMulNBits: onnxruntime's bytes at the RTN grid, its
kernel's results for weighted blocks, and a case where the weighting must move a scale."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgerun.exporters.onnx import weighted  # noqa: E402


def _ort_rtn(weight: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    config = mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, bits=bits)
    return tuple(mnq.DefaultWeightOnlyQuantizer(config).qbits_block_quant(weight))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_importance_on_the_rtn_grid_is_onnxruntimes_rtn_bit_for_bit(bits, symmetric):
    rng = np.random.default_rng(bits * 2 + symmetric)
    weight = (rng.normal(size=(160, 72)) * 0.05).astype(np.float32)
    weight[:32, 0] += 0.3  # an all-positive block: the asymmetric zero point clamps to 0
    weight[32:64, 1] = np.linspace(-0.5, 0.5, 32)  # values on exact half steps (ties)
    weight[64:96, 2] = 0.0  # an all-zero block: scale 0
    packed, scales, zero = _ort_rtn(weight, bits, symmetric)
    ours = weighted.quantize(weight, np.ones(160), bits, 32, symmetric, steps=0)
    assert np.array_equal(ours.packed, packed)
    assert np.array_equal(ours.scales, scales)
    if not symmetric:  # symmetric nodes carry no zero point input
        assert np.array_equal(ours.zero_points, zero)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_weighted_matmulnbits_node_runs_in_onnxruntime_as_dequantized(bits, symmetric):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(10 + bits + symmetric)
    k, n = 96, 40
    weight = rng.normal(size=(k, n)).astype(np.float32)
    importance = rng.gamma(0.5, size=k).astype(np.float32)
    blocks = weighted.quantize(weight, importance, bits, 32, symmetric)
    inputs = ["x", "B", "scales"] + ([] if symmetric else ["zero_points"])
    inits = [
        numpy_helper.from_array(blocks.packed, "B"),
        numpy_helper.from_array(blocks.scales.reshape(-1), "scales"),
    ]
    if not symmetric:
        inits.append(numpy_helper.from_array(blocks.zero_points.reshape(-1), "zero_points"))
    node = helper.make_node(
        "MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=32
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(2, k)).astype(np.float32)
    values = weighted.dequantize(blocks, k, bits, 32)
    assert session.run(None, {"x": x})[0] == pytest.approx(x @ values, rel=1e-4, abs=1e-4)
    rtn = weighted.dequantize(
        weighted.quantize(weight, importance, bits, 32, symmetric, 0), k, bits, 32
    )
    err = (importance[:, None] * (values - weight) ** 2).sum()
    assert err < (importance[:, None] * (rtn - weight) ** 2).sum()  # the search paid off


def test_an_important_column_moves_the_scale_off_rtn():
    """One block: 1.0 sets RTN's scale (1/8: 0.30 is stored as 0.25); when the column holding
    0.30 carries the importance, the search picks a scale that stores it (nearly) exactly."""
    column = np.zeros(32, dtype=np.float32)
    column[0], column[1] = 1.0, 0.30
    column[2:] = np.linspace(-0.2, 0.2, 30)
    weight = column[:, None]
    importance = np.full(32, 1e-3, dtype=np.float32)
    importance[1] = 1.0
    rtn = weighted.quantize(weight, importance, 4, 32, True, steps=0)
    ours = weighted.quantize(weight, importance, 4, 32, True)
    assert rtn.scales[0, 0] == np.float32(-0.125)
    assert abs(ours.scales[0, 0]) != pytest.approx(0.125, abs=1e-3)
    got = weighted.dequantize(ours, 32, 4, 32)[:, 0]
    base = weighted.dequantize(rtn, 32, 4, 32)[:, 0]
    assert abs(base[1] - 0.30) == pytest.approx(0.05, abs=1e-6)
    assert abs(got[1] - 0.30) < 0.01
    # uniform importance keeps the large value's error small instead
    flat = weighted.dequantize(weighted.quantize(weight, np.ones(32), 4, 32, True), 32, 4, 32)
    assert abs(flat[0, 0] - 1.0) < abs(got[0] - 1.0)


def test_unsupported_width_is_refused():
    with pytest.raises(ValueError, match="4 or 8 bits"):
        weighted.quantize(np.zeros((32, 4), np.float32), None, bits=3)


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_tally_rounds_a_wide_weight_band_by_band(
    symmetric: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bands of output columns give the whole weight's codes and zero points (every block is
    within one column) and its scales bar float near-ties, and the same error tally, with temporaries
    bounded by the band: the 1.5B shape's tied head whole took its write stage to 7.33 GiB."""
    import tracemalloc

    from edgerun.exporters.onnx import rounding

    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 4000)).astype(np.float32)
    imp = rng.random(256).astype(np.float32)
    monkeypatch.setattr(rounding, "BAND_BYTES", 1 << 40)
    whole_tally = rounding.Tally()
    tracemalloc.start()
    whole = whole_tally.quantize(w, imp, 4, 32, symmetric)
    whole_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    monkeypatch.setattr(rounding, "BAND_BYTES", 256 * 4 * 333)  # 333 columns, an uneven last band
    banded_tally = rounding.Tally()
    tracemalloc.start()
    banded = banded_tally.quantize(w, imp, 4, 32, symmetric)
    banded_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(whole.packed, banded.packed)
    assert np.array_equal(whole.zero_points, banded.zero_points)
    # a near-tie between two candidate scales can go the other way when the sums round in
    # another order (1 block in 32,000 here, 1.4e-5 apart); the codes are the same
    assert np.mean(np.isclose(whole.scales, banded.scales, rtol=1e-6, atol=0)) > 0.999
    np.testing.assert_allclose(whole.scales, banded.scales, rtol=1e-4)
    assert banded_tally.err_new == pytest.approx(whole_tally.err_new, rel=1e-5)
    assert banded_tally.err_rtn == pytest.approx(whole_tally.err_rtn, rel=1e-5)
    assert banded_peak < whole_peak / 2
