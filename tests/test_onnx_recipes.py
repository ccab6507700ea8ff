"""Mixed-precision int4 recipes: node roles, plans, the dequantizer the sensitivity runs on (checked
against onnxruntime's MatMulNBits kernel), and the target search (monotone, stops, records)."""

from __future__ import annotations

import numpy as np
import pytest

from edgerun.core.errors import EdgerunError
from edgerun.exporters.onnx.recipes import RECIPES, Recipe, Rule, get_recipe, node_role
from edgerun.exporters.onnx.sensitivity import search_k

OPTIMUM = [
    "/model/layers.0/self_attn/q_proj/MatMul",
    "/model/layers.0/self_attn/k_proj/MatMul",
    "/model/layers.0/self_attn/v_proj/MatMul",
    "/model/layers.0/self_attn/o_proj/MatMul",
    "/model/layers.0/mlp/gate_proj/MatMul",
    "/model/layers.0/mlp/up_proj/MatMul",
    "/model/layers.0/mlp/down_proj/MatMul",
    "/model/layers.11/mlp/down_proj/MatMul",
    "/lm_head/MatMul",
    "/model/layers.0/self_attn/MatMul",  # attention scores: not a projection
]
GENAI = [
    "/model/layers.3/attn/qkv_proj/MatMul",
    "/model/layers.3/attn/o_proj/MatMul",
    "/model/layers.3/mlp/gate_up_proj/MatMul",
    "/model/layers.3/mlp/down_proj/MatMul",
    "/lm_head/MatMul",
]


def test_node_roles_of_both_builders() -> None:
    keys = [r.key if (r := node_role(n)) else None for n in OPTIMUM + GENAI]
    assert keys == [
        "L0.q", "L0.k", "L0.v", "L0.o", "L0.gate", "L0.up", "L0.down", "L11.down",
        "lm_head", None, "L3.qkv", "L3.o", "L3.gate_up", "L3.down", "lm_head",
    ]  # fmt: skip
    assert node_role("model.layers.7.self_attn.v_proj").key == "L7.v"  # torch module names


def test_recipe_plan_rules_and_negative_layers() -> None:
    recipe = Recipe(
        "t",
        "test",
        rules=(Rule(8, ("lm_head",)), Rule(8, ("down",), layers=(0, -1))),
    )
    plan = recipe.plan(OPTIMUM)
    assert plan["/lm_head/MatMul"] == 8
    assert plan["/model/layers.0/mlp/down_proj/MatMul"] == 8
    assert plan["/model/layers.11/mlp/down_proj/MatMul"] == 8  # -1: the last of 12 layers
    assert plan["/model/layers.0/self_attn/q_proj/MatMul"] == 4
    assert "/model/layers.0/self_attn/MatMul" not in plan
    assert set(RECIPES["q4-pure"].plan(GENAI).values()) == {4}


def test_block_size_is_the_options_then_the_recipes_then_32() -> None:
    from edgerun.exporters.formats import ExportOptions
    from edgerun.exporters.onnx import resolve_block_size
    from edgerun.exporters.onnx.formats import format_of

    int4, int8 = format_of("onnx-int4"), format_of("onnx-int8")
    blocked = next(r.name for r in RECIPES.values() if r.block_size not in (None, 32))
    block = RECIPES[blocked].block_size
    assert resolve_block_size(ExportOptions(recipe=blocked), int4) == block
    assert resolve_block_size(ExportOptions(recipe=blocked, block_size=16), int4) == 16
    assert resolve_block_size(ExportOptions(recipe="q4-pure"), int4) == 32
    assert resolve_block_size(ExportOptions(target_kl=0.1), int4) == 32  # searches block 32
    assert resolve_block_size(ExportOptions(), int8) == 32  # no recipes


def test_unknown_recipe_is_a_one_line_error() -> None:
    with pytest.raises(EdgerunError, match="unknown int4 recipe 'nope'") as info:
        get_recipe("nope")
    assert "q4-pure" in str(info.value.hint)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_dequantize_matches_the_matmulnbits_kernel(bits: int, symmetric: bool) -> None:
    """x @ dequantize(W) equals what onnxruntime computes with the quantized MatMulNBits node."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgerun.exporters.onnx.quant import WeightOnlyConfig, quantize_weight_only
    from edgerun.exporters.onnx.sensitivity import dequantize

    rng = np.random.default_rng(bits + symmetric)
    k, n = 96, 40  # 3 blocks of 32 along K
    weight = rng.normal(size=(k, n)).astype(np.float32)
    weight[:, 0] += 3.0  # an offset block: asymmetric and symmetric differ there
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="/lm_head/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    config = WeightOnlyConfig(bits=bits, symmetric=symmetric, accuracy_level=0)
    quantized, quant = quantize_weight_only(model, config)
    assert quant["nodes"] == {"/lm_head/MatMul": bits}
    session = ort.InferenceSession(
        quantized.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = rng.normal(size=(1, k)).astype(np.float32)
    got = session.run(None, {"x": x})[0]
    values = dequantize(weight, bits, 32, symmetric)
    assert got == pytest.approx(x @ values, rel=1e-4, abs=1e-4)
    assert not np.allclose(values, weight)  # it really quantized
    step = np.abs(weight).max() / (7 if bits == 4 else 127)
    assert np.abs(values - weight).max() <= step
    del onnx


def test_search_finds_the_smallest_k_and_records_probes() -> None:
    curve = [1.0 / (1 + k) for k in range(41)]  # decreasing
    k, probes = search_k(lambda k: curve[k], 40, target=0.1)
    assert k == 9  # 1/10 <= 0.1 < 1/9
    assert [p.k for p in probes][:2] == [40, 0]
    assert len(probes) <= 2 + 6  # bisection: log2(40) rounds
    assert all(p.kl == curve[p.k] for p in probes)


def test_search_stops_when_the_target_is_out_of_reach() -> None:
    k, probes = search_k(lambda k: 0.5, 30, target=0.1)
    assert k is None
    assert [(p.k, p.kl) for p in probes] == [(30, 0.5)]


def test_search_takes_zero_when_pure_int4_already_meets_the_target() -> None:
    k, probes = search_k(lambda k: 0.01, 30, target=0.1)
    assert k == 0
    assert len(probes) == 2


@pytest.mark.parametrize("symmetric", [True, False])
def test_column_error_in_bands_equals_the_whole_weight(symmetric: bool) -> None:
    """The per-column 4-bit error, quantized a few output rows at a time (how the importance
    matrix bounds a vocabulary-sized head), equals quantizing the weight whole."""
    from edgerun.exporters.onnx.sensitivity import column_error, dequantize

    rng = np.random.default_rng(7)
    weight = rng.normal(size=(37, 96)).astype(np.float32)  # [N, K]: 37 outputs, 3 blocks
    weight[5] *= 20.0  # one loud row: a band boundary must not mix rows' scales
    whole = np.square(dequantize(weight.T, 4, 32, symmetric).T - weight, dtype=np.float64).sum(0)
    banded = column_error(weight, 4, 32, symmetric, chunk_bytes=4 * 96 * 4)  # 4 rows per band
    assert whole.max() > 0
    np.testing.assert_allclose(banded, whole, rtol=1e-12)


def test_the_target_searchs_probes_round_as_the_writer_does() -> None:
    """WriterRounding gives the weights the writer's importance-weighted rounding (Tally's
    banded search) computes with, RTN where a node has no statistics; each module rounded once
    per bit width."""
    from types import SimpleNamespace

    from edgerun.exporters.onnx.rounding import Tally
    from edgerun.exporters.onnx.sensitivity import Group
    from edgerun.exporters.onnx.sensitivity import dequantize as rtn
    from edgerun.exporters.onnx.target import WriterRounding
    from edgerun.exporters.onnx.weighted import dequantize

    rng = np.random.default_rng(3)
    k, n = 64, 40
    imp = np.linspace(0.1, 4.0, k).astype(np.float32) ** 2  # uneven input columns
    weight = rng.standard_normal((k, n)).astype(np.float32)
    up, head = object(), object()  # stand-ins: only their ids are used
    groups = [Group(node_role("model.layers.0.mlp.up_proj"), [up], k * n),
              Group(node_role("lm_head"), [head], k * n)]  # fmt: skip
    stats = SimpleNamespace(for_node=lambda name: imp if node_role(name).key == "L0.up" else None)
    rounding = WriterRounding(groups, stats, SimpleNamespace(block_size=32, symmetric=False))
    for bits in (4, 8):
        want = dequantize(Tally().quantize(weight, imp, bits, 32, False), k, bits, 32)
        plain = rtn(weight, bits, 32, False)
        assert np.array_equal(rounding(id(up), weight, bits), want)
        assert np.array_equal(rounding(id(head), weight, bits), plain)  # no statistics: RTN
        assert not np.array_equal(want, plain)  # the weighting moved some scales
    rounding(id(up), weight, 4)  # cached: not rounded again
    assert rounding.counts == {"importance-weighted": 2, "rtn": 2}
    assert rounding.method() == "importance-weighted + rtn"
