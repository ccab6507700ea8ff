"""Validation through the runtime path (edgerun.exporters.runtime_check): every export loads its
artifact with edgerun.load and decodes with the KV cache; an artifact the runtime cannot decode
with its cache fails the export with a one-line reason, and is written only with --force, then
marked failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")

import edgerun  # noqa: E402
from edgerun.core.manifest import read_manifest  # noqa: E402
from edgerun.exporters import runtime_check  # noqa: E402
from edgerun.exporters.onnx import FAMILY as ONNX  # noqa: E402
from edgerun.exporters.onnx import optimum  # noqa: E402
from edgerun.exporters.pipeline import export  # noqa: E402
from edgerun.exporters.validate import Thresholds  # noqa: E402

LOOSE = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)


def _export(src: Path, out: Path, text: Path, **options: Any) -> Any:
    options = {"thresholds": LOOSE, "builder": "optimum", "probe": False, **options}
    (result,) = export(str(src), "onnx-fp32", out, eval_text=text, progress=False, **options)
    return result


@pytest.fixture
def no_past_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """optimum exports the tiny llama as the borrowed configs were exported before: a custom
    config without use_past_in_inputs, so the graph takes no past_key_values (the starcoder2
    artifact that passed validation and could not run)."""
    from optimum.exporters.tasks import TasksManager

    def custom_configs(model: Any) -> dict[str, Any]:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="onnx", task=optimum.TASK, model_type="llama", library_name="transformers"
        )
        return {"model": constructor(model.config)}

    monkeypatch.setattr(optimum, "_custom_configs", custom_configs)


@pytest.fixture
def cache_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported graph's present.* outputs are multiplied by 0: one pass without a cache is
    untouched, every decode step after the first attends to zeroed keys and values."""
    import onnx
    from onnx import helper, numpy_helper

    original = ONNX.export

    def export_broken(fmt: str, ctx: Any, out_dir: Path) -> dict[str, Any]:
        fields = original(fmt, ctx, out_dir)
        path = out_dir / fields["model_file"]
        model = onnx.load(path)
        zero = numpy_helper.from_array(np.zeros((), np.float32), "edgerun_test_zero")
        model.graph.initializer.append(zero)
        present = {
            o.name: f"{o.name}.kept" for o in model.graph.output if o.name.startswith("present.")
        }
        for node in model.graph.node:  # attention inside the graph keeps the real keys / values
            node.input[:] = [present.get(name, name) for name in node.input]
            node.output[:] = [present.get(name, name) for name in node.output]
        for name, kept in present.items():
            model.graph.node.append(helper.make_node("Mul", [kept, zero.name], [name]))
        onnx.save(model, path)
        return fields

    monkeypatch.setattr(ONNX, "export", export_broken)


def test_an_artifact_decodes_with_its_cache_as_it_scores_without(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    result = _export(tiny_llama, tmp_path, short_eval_text)
    assert result.written and result.passed, result.reason
    check = read_manifest(result.path)["validation"]["kv_decode"]
    assert check["passed"] and check["backend"] == "onnxruntime"
    assert check["steps"] == runtime_check.STEPS and check["tolerance"] == 0.03
    assert check["max_rel_error"] < 1e-4 and check["greedy_agreement"] == 1.0


def test_a_graph_without_a_cache_fails_the_export(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, no_past_graph: None
) -> None:
    result = _export(tiny_llama, tmp_path / "a", short_eval_text)
    assert not result.written and result.passed is False
    assert "the runtime cannot load it: " in result.reason
    assert "is not a decoder with KV cache" in result.reason and "\n" not in result.reason
    assert not (tmp_path / "a" / "onnx-fp32").exists()
    forced = _export(tiny_llama, tmp_path / "b", short_eval_text, force=True)
    assert forced.written and forced.passed is False and forced.status == "FAIL, forced"
    validation = read_manifest(forced.path)["validation"]
    assert validation["passed"] is False and validation["kv_decode"] is None
    assert any("is not a decoder with KV cache" in r for r in validation["reasons"])


def test_a_failing_probe_fails_the_export(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, no_past_graph: None
) -> None:
    result = _export(tiny_llama, tmp_path, short_eval_text, no_validate=True, probe=True)
    assert not result.written and result.passed is False
    assert result.reason.startswith("the runtime cannot load it: ") and "\n" not in result.reason


def test_a_cache_that_decodes_wrongly_fails_the_export(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, cache_dropped: None
) -> None:
    result = _export(tiny_llama, tmp_path / "a", short_eval_text)
    assert not result.written and result.passed is False
    assert "decoding with the KV cache differs from the no-cache pass" in result.reason
    assert "\n" not in result.reason
    forced = _export(tiny_llama, tmp_path / "b", short_eval_text, force=True)
    check = read_manifest(forced.path)["validation"]["kv_decode"]
    assert check["passed"] is False and check["max_rel_error"] > 0.3, check
    # what the scored pass saw is untouched: the metrics alone would have passed it
    assert read_manifest(forced.path)["validation"]["mean_kl"] < 1e-6


def test_decode_logits_are_the_greedy_decode_of_generate(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    result = _export(tiny_llama, tmp_path, short_eval_text, no_validate=True)
    with edgerun.load(result.path, threads=1) as model:
        tokens, logits = model.decode_logits([5, 17, 42, 99], 6)
        chunks = model.generate([5, 17, 42, 99], max_tokens=6, ignore_eos=True)
        assert [c.token_id for c in chunks] == tokens
    assert logits.shape == (6, 384) and logits.dtype == np.float32
    assert [int(row.argmax()) for row in logits] == tokens


@pytest.mark.parametrize(
    "precision,tolerance",
    [("fp32", 0.03), ("fp16", 0.03), ("bf16", 0.03), ("int8", 0.15), ("q8_0", 0.15),
     ("int4", 0.25), ("q4_k_m", 0.25), ("iq3_m", 0.25)],
)  # fmt: skip
def test_the_tolerance_follows_the_bit_width(precision: str, tolerance: float) -> None:
    assert runtime_check.tolerance(precision) == tolerance
