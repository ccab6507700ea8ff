"""Say before working: the export's memory estimate, the refusal before any work, and what the
manifest records (the estimate beside the measured peak RSS of every stage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.exporters import memory
from edgerun.exporters.formats import ExportOptions


@pytest.mark.parametrize(
    ("text", "value"),
    [("8G", 8 * 10**9), ("7.5GB", 7_500_000_000), ("2GiB", 2 << 30), ("512m", 512 * 10**6),
     ("1000000", 10**6), ("64 KiB", 64 << 10)],
)  # fmt: skip
def test_sizes_parse(text: str, value: int) -> None:
    assert memory.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "8X", "-1G", "0", "1.2.3G"])
def test_bad_sizes_are_one_error(text: str) -> None:
    with pytest.raises(EdgerunError, match="memory size"):
        memory.parse_size(text)


def _shape(params: int) -> memory.Shape:
    return memory.Shape(params, params // 40, 4096, 14336, 128256)


def test_the_estimate_follows_the_stages_chosen() -> None:
    """An 8B-parameter shape: the whole-model ONNX stages dominate; GGUF alone without
    validation needs a fraction of that; the reference streams (its cost is far below a whole
    fp32 model's 32 GB)."""
    shape, opts, limit = _shape(8_000_000_000), ExportOptions(), 24 * 10**9
    both = memory.estimate(
        ["onnx-int4", "gguf-q4_k_m"], {"onnx-int4": "genai"}, opts, shape, 2815, limit
    )
    gguf = memory.estimate(["gguf-q4_k_m"], {}, ExportOptions(no_validate=True), shape, 0)
    assert both["peak_stage"] == "onnx build (genai)"
    assert gguf["peak_bytes"] < both["peak_bytes"] / 2
    assert "reference (layer by layer)" not in gguf["stages"]
    assert both["stages"]["reference (layer by layer)"] < 8 * 10**9
    # q4-mixed's Fisher needs the whole model and its gradients: past the limit, the
    # layer-by-layer importance matrix; a 135M model keeps Fisher
    assert both["calibration"] == "imatrix"
    assert "calibrate (importance matrix)" in both["stages"]
    small = memory.estimate(
        ["onnx-int4"], {"onnx-int4": "genai"}, opts, _shape(135 * 10**6), 2815, limit
    )
    assert small["calibration"] == "fisher" and "calibrate (Fisher, whole model)" in small["stages"]
    # from safetensors, Fisher runs layer by layer: far below the whole model, it fits
    streamed = memory.estimate(
        ["onnx-int4"], {"onnx-int4": "genai"}, opts, shape, 2815, limit, frozenset({"onnx-int4"})
    )
    assert streamed["calibration"] == "fisher-layers"
    assert streamed["stages"]["calibrate (Fisher, layer by layer)"] < 8 * 10**9
    tight = memory.estimate(
        ["onnx-int4"],
        {"onnx-int4": "genai"},
        opts,
        shape,
        2815,
        5 * 10**9,
        frozenset({"onnx-int4"}),
    )
    assert tight["calibration"] == "imatrix"
    target = memory.estimate(
        ["onnx-int4"], {"onnx-int4": "genai"}, ExportOptions(target_kl=0.1), shape, 2815
    )
    assert (
        "target search" in target["stages"]
        and "calibrate (importance matrix)" not in target["stages"]
    )
    # the importance statistics stream the checkpoint too: far below the whole fp32 model
    weighted = memory.estimate(["gguf-q4_k_m"], {}, ExportOptions(imatrix=True), shape, 2815)
    assert weighted["stages"]["importance statistics (layer by layer)"] < 8 * 10**9
    plain = memory.estimate(["gguf-q4_k_m"], {}, ExportOptions(imatrix=False), shape, 2815)
    assert "importance statistics (layer by layer)" not in plain["stages"]
    # an ONNX format without validation has no llama.cpp stage
    bare = memory.estimate(
        ["onnx-int4"], {"onnx-int4": "genai"}, ExportOptions(no_validate=True), shape, 0
    )
    assert not any(stage.startswith("gguf") for stage in bare["stages"])


#: The Llama-3.2-3B shape's export stages, measured (benchmarks/results/scale-20261207T224424Z.json,
#: 600 evaluation tokens): validation and the runtime checks, GiB.
MEASURED_3B = {
    "onnx-int8": {"validate": 6.42, "runtime checks": 5.56},
    "gguf-q4_k_m": {"validate": 4.25, "runtime checks": 5.47},
}


@pytest.mark.parametrize("fmt", sorted(MEASURED_3B))
def test_the_estimate_covers_the_measured_3b_stages(fmt: str) -> None:
    """The model before these stages' fit put the 3B onnx-int8 export at 4.86 GiB and its
    gguf-q4_k_m at 4.10 (measured 6.42 and 5.47): a machine with 5 GiB free would have started
    both and run out. Now each stage's estimate covers its measurement, within 25%."""
    shape = memory.Shape(3_212_749_824, 0, 3072, 8192, 128256, 28 * 2 * 8 * 128, 4096)
    family = "onnx" if fmt.startswith("onnx") else "gguf"
    streamed = frozenset({fmt} if family == "onnx" else ())  # as a safetensors checkpoint is
    estimated = memory.estimate([fmt], {fmt: "genai"}, ExportOptions(), shape, 600, None, streamed)
    for stage, measured in MEASURED_3B[fmt].items():
        name = f"{family} validate ({fmt})" if stage == "validate" else f"{stage} ({fmt})"
        got = estimated["stages"][name] / memory.GIB
        assert measured <= got <= 1.25 * measured, (stage, got)
    assert estimated["peak_bytes"] / memory.GIB >= max(MEASURED_3B[fmt].values())


def test_the_checkpoint_shape_reads_the_kv_cache_and_the_runtime_context(
    tiny_llama: Path,
) -> None:
    import json

    config = json.loads((tiny_llama / "config.json").read_text())
    shape = memory.checkpoint_shape(tiny_llama, config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    assert shape.kv_values_per_token == config["num_hidden_layers"] * 2 * kv_heads * head_dim
    assert shape.context == min(config["max_position_embeddings"], 4096)
    runtime = memory.runtime_check_bytes("gguf-q8_0", shape)
    assert runtime - memory.runtime_check_bytes("onnx-int8", shape) >= (
        2 * shape.kv_values_per_token * shape.context  # llama.cpp allocates its KV cache whole
    )


def test_export_refuses_before_any_work_naming_both_numbers(
    tiny_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["export", str(tiny_llama), "-f", "onnx-fp32", "-o", str(out), "--max-memory", "100M"]
    )
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: this export needs about ")
    assert "but --max-memory is 0.1 GiB" in line and "--no-validate" in line
    assert not out.exists()  # refused before anything was written


def test_the_available_ram_is_the_default_limit(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    class Low:
        available = 200 * 10**6

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Low())
    from edgerun.exporters.pipeline import export

    with pytest.raises(EdgerunError, match=r"but available RAM is 0\.2 GiB"):
        export(str(tiny_llama), "gguf-q8_0", tmp_path / "out", ExportOptions(progress=False))


def test_bad_max_memory_is_a_usage_error(tiny_llama: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["export", str(tiny_llama), "-f", "onnx-fp32", "-o", str(tmp_path), "--max-memory", "lots"],
    )
    assert result.exit_code == 2
    assert "'lots' is not a memory size" in result.stderr


def test_manifest_records_the_estimate_and_every_stage(
    tiny_llama: Path, tmp_path: Path, short_eval_text: Path
) -> None:
    from edgerun.exporters.pipeline import export
    from edgerun.exporters.validate import Thresholds

    gate = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)
    options = ExportOptions(
        eval_text=short_eval_text,
        probe=False,
        progress=False,
        thresholds=gate,
        max_memory=64 * 10**9,
    )
    [result] = export(str(tiny_llama), "onnx-fp32", tmp_path / "out", options)
    assert result.manifest is not None
    record = result.manifest["export"]
    estimate = record["memory_estimate"]
    assert estimate["limit_bytes"] == 64 * 10**9
    assert estimate["peak_bytes"] == max(estimate["stages"].values())
    names = [s["stage"] for s in record["stages"]]
    assert names[0].startswith("reference (PyTorch fp32, layer by layer")
    assert any(n.startswith("validate") for n in names)
    assert any(n.startswith("decode with the KV cache") for n in names)  # the runtime checks'
    assert all(s["peak_rss_bytes"] > 0 and s["wall_s"] >= 0 for s in record["stages"])
    assert record["peak_rss_bytes"] > 0


def test_the_validation_session_is_freed_before_the_runtime_checks(
    tiny_llama: Path, tmp_path: Path, short_eval_text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime checks load the artifact twice more (edgerun.load, then a no-cache pass);
    the validation's session must be gone by then, or three copies of the model are resident
    at once (the 8B shape's export: 9.31 GiB at its last recorded stage, 14.55 GiB at the
    process's high-water mark)."""
    import gc
    import weakref

    from edgerun.exporters import pipeline
    from edgerun.exporters.onnx import OnnxFamily
    from edgerun.exporters.validate import Thresholds

    made: list[weakref.ref[object]] = []
    seen: list[bool] = []
    original_logits, original_checks = OnnxFamily.logits_fn, pipeline.runtime_checks

    def logits_fn(self: OnnxFamily, artifact_dir: Path, manifest: dict) -> object:
        fn = original_logits(self, artifact_dir, manifest)
        made.append(weakref.ref(fn))
        return fn

    def runtime_checks(*args: object, **kwargs: object) -> list[str]:
        gc.collect()
        seen.append(all(ref() is None for ref in made[:1]))  # the validation's: made first
        return original_checks(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(OnnxFamily, "logits_fn", logits_fn)
    monkeypatch.setattr(pipeline, "runtime_checks", runtime_checks)
    gate = Thresholds(max_ppl_ratio=2.0, max_mean_kl=1.0, min_top1_agreement=0.0)
    options = ExportOptions(eval_text=short_eval_text, probe=False, progress=False, thresholds=gate)
    [result] = pipeline.export(str(tiny_llama), "onnx-fp32", tmp_path / "out", options)
    assert result.written and made and seen == [True]
