"""onnx-int4 quantizes the lm_head even when element-wise ops follow it: phi's bias, granite's
logits scaling, gemma2's soft-capping, cohere's logit scale (tiny random checkpoints of each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgerun.core.manifest import read_manifest
from edgerun.exporters.pipeline import export
from edgerun.exporters.validate import Thresholds
from tests.tiny_models import build_tiny_model

LOOSE = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)
# family -> (model_type, config overrides), with the knob that puts an op after the lm_head
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "phi": ("phi", {"num_key_value_heads": 4, "partial_rotary_factor": 0.5}),  # lm_head bias
    "granite": ("granite", {"num_key_value_heads": 2, "logits_scaling": 4.0}),
    "gemma2": (
        "gemma2",
        {
            "num_key_value_heads": 2,
            "head_dim": 16,
            "final_logit_softcapping": 5.0,
            "attn_logit_softcapping": 20.0,
            "sliding_window": 64,
            "query_pre_attn_scalar": 16,
        },
    ),  # fmt: skip
    "cohere": ("cohere", {"num_key_value_heads": 2, "logit_scale": 0.5}),
}


@pytest.mark.parametrize("family", sorted(HEADS))
def test_int4_quantizes_an_lm_head_that_ops_follow(
    family: str, short_eval_text: Path, tmp_path: Path
) -> None:
    import onnx

    src = build_tiny_model(family, tmp_path / "src", spec=HEADS[family])
    (result,) = export(
        str(src), "onnx-int4", tmp_path / "out", eval_text=short_eval_text, thresholds=LOOSE,
        builder="optimum", recipe="q4-pure", progress=False, probe=False,
    )  # fmt: skip
    assert result.written and result.passed, result.reason
    quant = read_manifest(result.path)["quant"]
    assert quant["lm_head"] == "rtn" and quant["embedding"] is not None
    graph = onnx.load(str(result.path / "model.onnx"), load_external_data=False).graph
    (logits,) = [n for n in graph.node if "logits" in n.output]
    assert logits.op_type != "MatMulNBits"  # an op follows the quantized head
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name]
    assert len(heads) == 1 and "MatMul" not in {
        n.op_type for n in graph.node if "lm_head" in n.name
    }


def test_a_format_the_family_cannot_make_is_reported_while_the_others_are_made(
    short_eval_text: Path, tmp_path: Path
) -> None:
    from edgerun.core.errors import EdgerunError

    # phi with a feed-forward width other than 4 x hidden: llama.cpp would run it wrongly
    src = build_tiny_model("phi", tmp_path / "src", spec=HEADS["phi"])
    onnx, gguf = export(
        str(src), "onnx-fp32,gguf-f16", tmp_path / "out", eval_text=short_eval_text,
        thresholds=LOOSE, builder="optimum", progress=False, probe=False,
    )  # fmt: skip
    assert onnx.written and onnx.passed, onnx.reason
    assert not gguf.written and gguf.status == "error"
    assert "would run wrongly in llama.cpp: intermediate_size 128" in (gguf.reason or "")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["onnx-fp32"]
    # when no requested format can be made, the refusal comes before any work
    with pytest.raises(EdgerunError, match="would run wrongly in llama.cpp"):
        export(str(src), "gguf-f16", tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()


def test_a_graph_onnxruntime_cannot_run_is_a_per_format_error_naming_the_other_builder(
    short_eval_text: Path, tmp_path: Path
) -> None:
    """onnxruntime-genai's builder makes a phi graph (head size 16, partial rotary) whose
    GroupQueryAttention onnxruntime refuses at run time: reported, not a traceback."""
    pytest.importorskip("onnxruntime_genai")
    src = build_tiny_model("phi", tmp_path / "src", spec=HEADS["phi"])
    (result,) = export(
        str(src), "onnx-fp32", tmp_path / "out", eval_text=short_eval_text, thresholds=LOOSE,
        builder="genai", progress=False, probe=False,
    )  # fmt: skip
    assert not result.written
    assert (result.reason or "").startswith("onnxruntime cannot run ")
    assert not (tmp_path / "out" / "onnx-fp32").exists()


def test_auto_builder_skips_the_genai_graph_that_differs_from_transformers(
    short_eval_text: Path, tmp_path: Path
) -> None:
    """gemma2: onnxruntime-genai's fp32 graph is measurably not the model (the KL below), so
    --builder auto takes optimum's, which matches; --builder genai still builds it on request."""
    pytest.importorskip("onnxruntime_genai")
    src = build_tiny_model("gemma2", tmp_path / "src", spec=HEADS["gemma2"])
    common: dict[str, Any] = {"eval_text": short_eval_text, "thresholds": LOOSE, "probe": False}
    (auto,) = export(str(src), "onnx-fp32", tmp_path / "auto", progress=False, **common)
    (genai,) = export(
        str(src), "onnx-fp32", tmp_path / "genai", builder="genai", progress=False, **common
    )
    assert read_manifest(auto.path)["builder"] == "optimum"
    assert auto.validation["mean_kl"] < 1e-6
    assert read_manifest(genai.path)["builder"] == "genai"
    assert genai.validation["mean_kl"] > 0.01  # the reason auto does not pick it
