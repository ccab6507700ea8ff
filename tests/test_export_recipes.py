"""onnx-int4 recipes, the quality-targeted search, the decode probe and bits per weight, end to end
on the tiny fixtures (real exports, real onnxruntime validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.manifest import read_manifest
from edgerun.exporters.onnx.recipes import RECIPES
from edgerun.exporters.pipeline import export
from edgerun.exporters.validate import Thresholds

LOOSE = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)


def _bits(artifact: Path, op: str) -> list[int]:
    import onnx
    from onnx import helper

    model = onnx.load(artifact / "model.onnx", load_external_data=False)
    return [
        helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == op
        for a in n.attribute
        if a.name == "bits"
    ]


def _export(src: Path, out: Path, text: Path, **options: Any) -> Any:
    options.setdefault("thresholds", LOOSE)
    (result,) = export(str(src), "onnx-int4", out, eval_text=text, progress=False, **options)
    return result


@pytest.mark.parametrize("builder", ["optimum", "genai"])
def test_head8_gives_the_lm_head_and_the_shared_embedding_8_bits(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, builder: str
) -> None:
    pure = _export(tiny_llama, tmp_path / "p", short_eval_text, recipe="q4-pure", builder=builder)
    head8 = _export(tiny_llama, tmp_path / "h", short_eval_text, recipe="q4-head8", builder=builder)
    assert pure.written and head8.written, (pure.reason, head8.reason)
    quant = read_manifest(head8.path)["quant"]
    assert quant["recipe"]["name"] == "q4-head8"
    assert quant["nodes"]["/lm_head/MatMul"] == 8
    assert quant["embedding"]["shared_with_lm_head"] is True
    assert _bits(head8.path, "GatherBlockQuantized") == [8]  # reads the 8-bit lm_head blocks
    assert sorted(_bits(head8.path, "MatMulNBits")) == sorted(quant["nodes"].values())
    assert quant["bits_summary"] == {"4": len(quant["nodes"]) - 1, "8": 1}
    assert set(_bits(pure.path, "MatMulNBits")) == {4}
    size_pure, size_head8 = (read_manifest(r.path)["size"] for r in (pure, head8))
    assert size_pure["parameters"] == size_head8["parameters"] > 0
    assert size_pure["bits_per_weight"] < size_head8["bits_per_weight"]
    assert head8.validation["mean_kl"] < pure.validation["mean_kl"]


def test_the_default_recipe_spends_its_byte_budget_on_the_most_sensitive_groups(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    pure = _export(tiny_llama, tmp_path / "p", short_eval_text, recipe="q4-pure", builder="genai")
    mixed = _export(tiny_llama, tmp_path / "m", short_eval_text, builder="genai")
    assert pure.written and mixed.written, (pure.reason, mixed.reason)
    quant = read_manifest(mixed.path)["quant"]
    recipe = quant["recipe"]
    assert recipe["name"] == "q4-mixed" and recipe["budget"] == RECIPES["q4-mixed"].budget
    calib = recipe["calibration"]
    assert 0 < calib["extra_bytes"] <= calib["budget_bytes"]
    assert quant["bits_summary"]["8"] == len(recipe["raised"]) > 0
    sens = recipe["sensitivity"]
    assert len(sens) == len(quant["nodes"]) and all(v >= 0 for v in sens.values())
    assert max(sens, key=sens.get) in recipe["raised"] or max(sens, key=sens.get) == "lm_head"
    pure_bytes = read_manifest(pure.path)["size"]["model_bytes"]
    mixed_bytes = read_manifest(mixed.path)["size"]["model_bytes"]
    assert pure_bytes < mixed_bytes <= pure_bytes + calib["budget_bytes"] + 4096
    assert mixed.validation["mean_kl"] < pure.validation["mean_kl"]


def test_the_probe_times_the_artifact_through_the_runtime(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    result = _export(tiny_llama, tmp_path, short_eval_text, builder="optimum")
    probe = read_manifest(result.path)["probe"]
    assert "not a benchmark" in probe["what"]
    assert probe["decode_ms_per_token"] > 0
    assert probe["decode_tok_s"] == pytest.approx(1e3 / probe["decode_ms_per_token"], rel=0.01)
    assert probe["backend"] == "onnxruntime" and probe["tokens"] == 32
    off = _export(tiny_llama, tmp_path / "off", short_eval_text, builder="optimum", probe=False)
    assert "probe" not in read_manifest(off.path)


@pytest.mark.parametrize("builder", ["optimum", "genai"])
def test_target_search_meets_the_target_with_the_fewest_8_bit_groups(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path, builder: str
) -> None:
    pure = _export(tiny_llama, tmp_path / "p", short_eval_text, recipe="q4-pure", builder=builder)
    target = pure.validation["mean_kl"] / 3  # pure int4 misses it: the search must raise groups
    result = _export(tiny_llama, tmp_path / "t", short_eval_text, target_kl=target, builder=builder)
    assert result.written, result.reason
    recipe = read_manifest(result.path)["quant"]["recipe"]
    calib = recipe["calibration"]
    aim = recipe["target"]["aim"]
    assert recipe["target"] == {"metric": "kl", "value": target, "margin": 0.8, "aim": aim}
    k = calib["groups_in_8_bits"]
    probes = {p["k"]: p["kl"] for p in calib["probes"]}
    assert 0 < k <= calib["groups"]
    assert probes[k] <= aim < probes[k - 1]  # minimal: one group fewer misses the aim
    assert probes[calib["groups"]] <= probes[0]  # all-8-bit is better than all-4-bit
    assert len(recipe["sensitivity"]) == calib["groups"]
    # the probes rounded with the statistics the writer rounded with (by the weighted search,
    # also where the writer's GPTQ refines it: see WriterRounding)
    assert calib["probe_rounding"] == "importance-weighted"
    nodes = read_manifest(result.path)["quant"]["nodes"]
    assert sum(1 for b in nodes.values() if b == 8) >= k
    # the gate held the real artifact to the target on the eval text
    assert read_manifest(result.path)["validation"]["thresholds"]["max_mean_kl"] == target
    assert result.validation["mean_kl"] <= target


def test_an_unreachable_target_is_a_clear_error(
    tiny_llama: Path, short_eval_text: Path, tmp_path: Path
) -> None:
    result = _export(tiny_llama, tmp_path, short_eval_text, target_kl=1e-9, builder="optimum")
    assert not result.written
    assert "out of reach" in result.reason and "8 bits" in result.reason


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "nope"], "error: unknown int4 recipe 'nope'"),
        (["--target-kl", "0.1", "--recipe", "q4-pure"], "error: give one of --recipe"),
        (["--target-kl", "-1"], "error: --target-kl -1.0 is out of range"),
        (["--target-ppl-ratio", "0.9"], "error: --target-ppl-ratio 0.9 is out of range"),
        (["--target-kl", "0.1", "--algorithm", "hqq"], "error: a quality target searches RTN"),
        (["--target-kl", "0.1", "--no-validate"], "error: a quality target is checked"),
    ],
)
def test_recipe_options_fail_in_one_line_before_any_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        cli, ["export", "nowhere", "-f", "onnx-int4", "-o", str(tmp_path), *args]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert not any(tmp_path.iterdir())


def test_list_recipes_names_the_default() -> None:
    result = CliRunner().invoke(cli, ["export", "--list-recipes"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("q4-mixed (default): ") for line in lines)
    assert any(line.startswith("q4-pure: ") for line in lines)
    assert any(line.startswith("q4-head8: ") for line in lines)
