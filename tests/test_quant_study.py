"""benchmarks/quant_study.py's planning: the bits per weight it reports, plans that stay within a
target size, the lm_head raised first when asked, and groups that match an export's graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import quant_study


@pytest.fixture(scope="module")
def model(tiny_llama: Path):
    from edgerun.exporters.reference import load_model

    return load_model(tiny_llama)


def test_bits_per_weight_counts_codes_scales_and_zero_points(model) -> None:
    assert quant_study.bits_per_weight(model, {}, 32) == pytest.approx(4 + 36 / 32)
    assert quant_study.bits_per_weight(model, {}, 64) == pytest.approx(4 + 36 / 64)
    every = {name: 8 for name in quant_study._linears(model)}
    assert quant_study.bits_per_weight(model, every, 32) == pytest.approx(8 + 40 / 32)


def test_genai_nodes_make_one_group_per_projection_and_the_head(model) -> None:
    from edgerun.exporters.onnx import sensitivity as sens

    groups = sens.torch_groups(model, quant_study.genai_nodes(model))
    keys = {g.role.key for g in groups}
    layers = model.config.num_hidden_layers
    assert keys == {"lm_head"} | {
        f"L{i}.{r}" for i in range(layers) for r in ("qkv", "o", "gate", "up", "down")
    }
    # q, k and v are one group: every linear is in exactly one group
    assert sum(len(g.modules) for g in groups) == len(quant_study._linears(model))


@pytest.mark.parametrize("block", [32, 64])
def test_plans_stay_within_the_target_and_head8_raises_the_head_first(model, block) -> None:
    from edgerun.exporters.onnx import sensitivity as sens

    groups = sens.torch_groups(model, quant_study.genai_nodes(model))
    for i, group in enumerate(groups):  # a fixed ranking with the head last
        group.sensitivity = 0.0 if group.role.key == "lm_head" else 1.0 + i
    ranked = sens.rank(groups)
    base = quant_study.bits_per_weight(model, {}, block)
    target = base + 1.5
    plan, raised = quant_study.plan_to_bpw(model, ranked, target, block)
    size = quant_study.bits_per_weight(model, plan, block)
    assert base < size <= target
    order = [g.role.key for g in ranked]
    assert raised[0] == order[0] and "lm_head" not in raised
    assert [order.index(k) for k in raised] == sorted(order.index(k) for k in raised)
    head, raised8 = quant_study.plan_to_bpw(model, ranked, target, block, head8=True)
    assert raised8[0] == "lm_head" and head["lm_head"] == 8
    assert quant_study.bits_per_weight(model, head, block) <= target
    nothing, none = quant_study.plan_to_bpw(model, ranked, base, block)
    assert nothing == {} and none == []
