"""GGUF family: conversion agrees with the PyTorch reference, quant types load, bad input fails."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from edgerun.core.errors import EdgerunError, MissingExtraError  # noqa: E402
from edgerun.exporters.formats import (  # noqa: E402
    ExportContext,
    ExportOptions,
    ReferenceModel,
    family_of,
)
from edgerun.exporters.gguf import FAMILY, MODEL_FILE  # noqa: E402
from edgerun.exporters.gguf.quantize import (  # noqa: E402
    EXCLUDED,
    NEEDS_IMATRIX,
    quant_types,
    quantize,
)
from edgerun.exporters.reference import eval_token_ids, read_eval_text, torch_logits_fn  # noqa: E402
from edgerun.exporters.validate import Reference  # noqa: E402
from edgerun.sources.resolve import Checkpoint  # noqa: E402
from tests.registry_fixtures import QUIRK_CHECKPOINTS, QUIRK_FIXES  # noqa: E402


class Exporter:
    """One tiny model: its reference, a shared scratch dir (the f16 intermediate is reused)."""

    def __init__(self, ckpt: Path, root: Path) -> None:
        self.ref = ReferenceModel(ckpt)
        self.root = root
        options = ExportOptions(progress=False)
        checkpoint = Checkpoint(path=ckpt, source=str(ckpt), kind="local")
        (root / "scratch").mkdir()
        self.ctx = ExportContext(checkpoint, self.ref, options, root / "scratch")
        text = read_eval_text(None)
        # 4 windows of the shipped eval text keep the file fast; the pipeline scores all of it.
        ids = eval_token_ids(self.ref.tokenizer, text)[:1024]
        self.reference = Reference(torch_logits_fn(self.ref.model), ids, text, window=256)

    def export(self, fmt: str) -> tuple[Path, dict]:
        out = self.root / fmt
        out.mkdir()
        FAMILY.check_options(fmt, self.ctx.options)
        fields = FAMILY.export(fmt, self.ctx, out)
        return out, fields

    def score(self, out: Path, fields: dict):
        return self.reference.score(FAMILY.logits_fn(out, fields))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exporter(request, tiny_model_dirs, tmp_path_factory) -> Exporter:
    return Exporter(tiny_model_dirs[request.param], tmp_path_factory.mktemp(request.param))


def test_registered_in_the_format_registry():
    assert family_of("gguf-q4_k_m") is FAMILY
    formats = FAMILY.formats()
    assert formats[:3] == ["gguf-f32", "gguf-f16", "gguf-bf16"]
    for required in (
        "q8_0",
        "q6_k",
        "q5_k_m",
        "q5_0",
        "q4_k_m",
        "q4_k_s",
        "q4_0",
        "q3_k_m",
        "q2_k",
    ):
        assert f"gguf-{required}" in formats
    assert not any(f"gguf-{name}" in formats for name in EXCLUDED)


@pytest.mark.parametrize("fmt,max_kl", [("gguf-f32", 1e-6), ("gguf-f16", 1e-3)])
def test_float_gguf_agrees_with_reference(exporter, fmt, max_kl):
    out, fields = exporter.export(fmt)
    assert fields["model_file"] == MODEL_FILE
    assert fields["builder"] == "llama.cpp convert_hf_to_gguf"
    assert fields["gguf"]["converter"] == "llama.cpp convert_hf_to_gguf.py"
    assert fields["quant"] is None
    v = exporter.score(out, fields)
    assert v.mean_kl < max_kl
    assert abs(v.ppl_ratio - 1.0) < 1e-3
    assert v.top1_agreement > 0.98  # near-uniform random logits: the odd near-tie flips
    assert v.passed


def test_logits_shape_and_dtype(exporter):
    out, fields = exporter.export("gguf-bf16")
    ids = np.arange(40, dtype=np.int64)
    logits = FAMILY.logits_fn(out, fields)(ids)
    assert logits.shape == (40, 384) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_every_quant_type_loads_and_runs(exporter, tmp_path):
    """Each listed type quantizes with llama.cpp and runs; k-quants fall back per tensor on the
    tiny fixture (rows of 64/128 are not multiples of 256), which the manifest records. The types
    that need an importance matrix are exported with --imatrix in tests/test_imatrix.py."""
    for qtype in (t for t in quant_types() if t not in NEEDS_IMATRIX):
        out, fields = exporter.export(f"gguf-{qtype}")
        assert fields["precision"] == qtype and fields["quant"]["type"] == qtype
        types = fields["gguf"]["tensor_types"]
        assert types.get("F32", 0) >= 5 and not {"F16", "BF16"} & set(types)
        logits = FAMILY.logits_fn(out, fields)(np.arange(16, dtype=np.int64))
        assert logits.shape == (16, 384) and np.isfinite(logits).all(), qtype
    assert (exporter.ctx.scratch / "intermediate-f16.gguf").is_file()


def test_more_bits_track_the_reference_closer(exporter):
    kl = {}
    for fmt in ("gguf-q8_0", "gguf-q4_0"):
        out = exporter.root / fmt
        if not out.exists():
            exporter.export(fmt)
        kl[fmt] = exporter.score(out, {"model_file": MODEL_FILE}).mean_kl
    assert kl["gguf-q8_0"] < kl["gguf-q4_0"] / 10


def _tensor_names(path: Path) -> set[str]:
    import gguf

    return {t.name for t in gguf.GGUFReader(path).tensors}


def test_untied_embeddings_write_output_weight(tiny_untied, tiny_llama, tmp_path):
    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert

    for ckpt, tied in ((tiny_untied, False), (tiny_llama, True)):
        out = tmp_path / f"{ckpt.name}.gguf"
        convert(converter.ensure(), ckpt, out, "f32")
        names = _tensor_names(out)
        assert "token_embd.weight" in names
        assert ("output.weight" in names) is not tied


def test_untied_model_agrees_with_reference(tiny_untied, tmp_path):
    exp = Exporter(tiny_untied, tmp_path)
    out, fields = exp.export("gguf-f16")
    v = exp.score(out, fields)
    assert v.mean_kl < 1e-3 and v.passed


def test_an_architecture_llama_cpp_lacks_is_one_line_naming_it(tmp_path):
    import json

    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(EdgerunError, match="does not support the architecture NoSuchForCausalLM"):
        convert(converter.ensure(), ckpt, tmp_path / "m.gguf", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("model_type", sorted(QUIRK_CHECKPOINTS))
def test_checkpoints_llama_cpp_would_run_wrongly_are_refused_before_work(model_type):
    wrong, right = QUIRK_CHECKPOINTS[model_type]
    with pytest.raises(EdgerunError, match="would run wrongly in llama.cpp"):
        FAMILY.check_source("gguf-f16", ExportOptions(), {"model_type": model_type, **wrong})
    FAMILY.check_source("gguf-f16", ExportOptions(), {"model_type": model_type, **right})


@pytest.mark.parametrize("model_type", sorted(QUIRK_FIXES))
def test_the_converter_reads_a_checkpoint_view_with_the_quirks_config(model_type, tmp_path):
    from transformers import AutoConfig

    from edgerun.exporters.gguf.convert import _checkpoint_view

    wrong, fixes, right = QUIRK_FIXES[model_type]
    for name, arguments in (("wrong", wrong), ("right", right)):
        AutoConfig.for_model(model_type, **arguments).save_pretrained(tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
        (tmp_path / f"view-{name}").mkdir()
    saved = (tmp_path / "wrong" / "config.json").read_text()
    view = _checkpoint_view(tmp_path / "wrong", tmp_path / "view-wrong")
    assert view != tmp_path / "wrong" and (tmp_path / "wrong" / "config.json").read_text() == saved
    config = json.loads((view / "config.json").read_text())
    assert config == {**json.loads(saved), **fixes}
    assert (view / "model.safetensors").resolve() == tmp_path / "wrong" / "model.safetensors"
    right = _checkpoint_view(tmp_path / "right", tmp_path / "view-right")  # links, unchanged
    assert (right / "config.json").resolve() == tmp_path / "right" / "config.json"


def test_unknown_quant_type_lists_available(tmp_path):
    with pytest.raises(EdgerunError, match="unknown GGUF format 'gguf-q7_x'") as err:
        FAMILY.check_options("gguf-q7_x", ExportOptions())
    assert "gguf-q4_k_m" in str(err.value)
    with pytest.raises(EdgerunError, match="unknown GGUF quantization type 'tq1_0'"):
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "tq1_0", 1)


def test_missing_llama_cpp_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(MissingExtraError, match=r"edgerun\[gguf\]"):
        FAMILY.check_options("gguf-q4_0", ExportOptions())
    with pytest.raises(MissingExtraError):  # its sdist carries the converter
        FAMILY.check_options("gguf-f16", ExportOptions(no_validate=True))


def test_failed_quantization_leaves_nothing(tmp_path):
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(EdgerunError, match="could not quantize to q4_0: .*failed to load model"):
        quantize(bad, tmp_path / "out.gguf", "q4_0", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not.gguf"]


def test_interrupted_conversion_leaves_nothing(tiny_llama, tmp_path):
    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert

    def interrupt(detail: str) -> None:
        raise KeyboardInterrupt  # at the first tensor the converter reports

    with pytest.raises(KeyboardInterrupt):
        convert(converter.ensure(), tiny_llama, tmp_path / "m.gguf", "f16", show=interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_smollm2_q4_k_m_says_paris(smollm2_dir, tmp_path):
    exp_root = tmp_path / "smol"
    exp_root.mkdir()
    ref = ReferenceModel(smollm2_dir)
    ctx = ExportContext(
        Checkpoint(path=smollm2_dir, source="smollm2-135m", kind="demo"),
        ref,
        ExportOptions(progress=False),
        exp_root,
    )
    out = tmp_path / "gguf-q4_k_m"
    out.mkdir()
    fields = FAMILY.export("gguf-q4_k_m", ctx, out)
    # SmolLM2's hidden size 576 is not a multiple of 256: llama.cpp keeps Q4_K/Q6_K only for the
    # 1536-wide ffn_down rows and falls back per tensor to Q5_0 / Q8_0 elsewhere.
    types = fields["gguf"]["tensor_types"]
    assert types.get("Q4_K", 0) > 0 and types.get("Q5_0", 0) > 0
    from edgerun.exporters.gguf.runtime import load

    llm = load(out / MODEL_FILE, n_ctx=128)
    text = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert "Paris" in text


def test_cli_export_writes_validated_gguf_artifacts(tiny_qwen2, tmp_path):
    import json

    from click.testing import CliRunner

    from edgerun.cli import cli
    from edgerun.core.manifest import read_manifest, verify

    out = tmp_path / "out"
    args = ["export", str(tiny_qwen2), "-f", "gguf-f16,gguf-q4_0", "-o", str(out), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["format"], r["status"]) for r in rows] == [
        ("gguf-f16", "pass"),
        ("gguf-q4_0", "pass"),
    ]
    for fmt, precision in (("gguf-f16", "fp16"), ("gguf-q4_0", "q4_0")):
        manifest = read_manifest(out / fmt)
        assert manifest["family"] == "gguf" and manifest["precision"] == precision
        assert manifest["model_file"] == MODEL_FILE
        assert manifest["gguf"]["tokenizer_pre"] == "gpt-2"
        assert manifest["validation"]["passed"] is True
        assert "llama_cpp_python" in manifest["libraries"]
        assert verify(out / fmt).passed
    assert read_manifest(out / "gguf-q4_0")["quant"]["type"] == "q4_0"
    assert sorted(p.name for p in out.iterdir()) == ["gguf-f16", "gguf-q4_0"]  # scratch removed


def test_cli_lists_gguf_formats():
    from click.testing import CliRunner

    from edgerun.cli import cli

    result = CliRunner().invoke(cli, ["export", "--list"])
    assert result.exit_code == 0
    listed = result.output.split()
    assert "gguf-q4_k_m" in listed and "gguf-f16" in listed and "gguf-tq1_0" not in listed
    assert "gguf-iq2_xs" in listed  # exported with --imatrix


def test_one_f16_conversion_serves_every_format_of_a_call(tiny_llama, tmp_path, monkeypatch):
    import edgerun.exporters.gguf as family_module

    exp = Exporter(tiny_llama, tmp_path)
    out, _ = exp.export("gguf-f16")
    intermediate = exp.ctx.scratch / "intermediate-f16.gguf"
    assert intermediate.read_bytes() == (out / MODEL_FILE).read_bytes()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(family_module, "_convert", no_second_conversion)
    out, fields = exp.export("gguf-q8_0")
    assert fields["gguf"]["tensor_types"]["Q8_0"] == 15
    assert exp.score(out, fields).passed


def test_gguf_source_round_trips(tiny_llama, tmp_path):
    """A .gguf SOURCE (dequantized to an HF checkpoint by transformers) exports again, and the
    round-tripped file holds the same vocabulary and tokenizes the same."""
    import gguf

    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert
    from edgerun.exporters.gguf.runtime import tokenize
    from edgerun.exporters.pipeline import export

    first = tmp_path / "tiny-llama-f32.gguf"
    convert(converter.ensure(), tiny_llama, first, "f32")
    (result,) = export(str(first), "gguf-f16", tmp_path / "out", progress=False)
    assert result.status == "pass", result.reason
    again = result.path / MODEL_FILE

    def tokens(path):
        return gguf.GGUFReader(path).get_field("tokenizer.ggml.tokens").contents()

    assert tokens(again) == tokens(first)
    text = read_eval_text(None)[:2000]
    assert tokenize(again, text) == tokenize(first, text)


def test_unloadable_gguf_is_an_edgerun_error(tmp_path):
    bad = tmp_path / MODEL_FILE
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    logits = FAMILY.logits_fn(tmp_path, {"model_file": MODEL_FILE})
    with pytest.raises(EdgerunError, match="llama.cpp cannot load"):
        logits(np.arange(8, dtype=np.int64))


def test_validation_runs_llama_cpp_with_the_export_threads(monkeypatch, tmp_path):
    """--threads reaches GGUF validation as it reaches ONNX validation (it was dropped)."""
    from edgerun.exporters.gguf import runtime

    seen = {}
    monkeypatch.setattr(runtime, "logits_fn", lambda path, threads=None: seen.update(t=threads))
    FAMILY.logits_fn(tmp_path, {"model_file": MODEL_FILE, "threads": 3})
    assert seen == {"t": 3}
