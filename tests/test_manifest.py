"""The manifest an export writes (every schema field) and `edgerun verify` on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.integrity import sha256_file
from edgerun.core.manifest import MANIFEST_NAME, SCHEMA_VERSION, read_manifest, verify
from edgerun.exporters.pipeline import export
from edgerun.exporters.validate import Thresholds

GATE = Thresholds(max_ppl_ratio=1.1, max_mean_kl=0.1, min_top1_agreement=0.3)


@pytest.fixture(scope="module")
def artifact(tiny_untied: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validated onnx-int4 artifact of the untied tiny llama (made once for this module)."""
    from edgerun.exporters.reference import read_eval_text

    text = tmp_path_factory.mktemp("eval") / "eval.txt"
    text.write_text(read_eval_text(None)[:2000], encoding="utf-8")
    out = tmp_path_factory.mktemp("manifest")
    (r,) = export(
        str(tiny_untied),
        "onnx-int4",
        out,
        eval_text=text,
        thresholds=GATE,
        builder="optimum",
        progress=False,
    )
    assert r.written and r.path is not None
    return r.path


@pytest.fixture
def copy(artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the artifact that a test may damage."""
    return Path(shutil.copytree(artifact, tmp_path / "onnx-int4"))


def test_manifest_has_every_schema_field(artifact: Path, tiny_untied: Path) -> None:
    m = read_manifest(artifact)
    assert m["schema_version"] == SCHEMA_VERSION
    assert (m["format"], m["family"], m["precision"], m["builder"]) == (
        "onnx-int4",
        "onnx",
        "int4",
        "optimum",
    )
    assert m["model_file"] == "model.onnx"
    assert m["quant"]["bits"] == 4 and m["quant"]["block_size"] == 32
    # onnx-int4's default: asymmetric RTN blocks (uint8 zero points)
    assert m["quant"]["symmetric"] is False and m["quant"]["algorithm"] == "rtn"
    assert m["architecture"] == "LlamaForCausalLM" and m["model_type"] == "llama"
    assert m["context_length"] == 256
    source = m["source"]
    assert source["kind"] == "local" and source["path"] == str(tiny_untied.resolve())
    assert source["weights_sha256"] == sha256_file(tiny_untied / "model.safetensors")
    assert set(source) >= {"spec", "kind", "path", "revision", "gguf_sha256", "weights_sha256"}
    assert m["onnx"]["opset"] >= 17 and m["onnx"]["ir_version"] >= 8
    assert m["onnx"]["domains"]["com.microsoft"] == 1 and m["onnx"]["external_data"] is False
    assert {"edgerun", "onnxruntime", "onnx", "optimum", "transformers", "torch"} <= set(
        m["libraries"]
    )
    assert m["export"]["wall_s"] > 0 and m["export"]["peak_rss_bytes"] > 50_000_000
    assert m["export"]["created"].endswith("Z")
    v = m["validation"]
    assert v["passed"] is True and v["tokens"] > 256
    assert v["thresholds"] == {"max_ppl_ratio": 1.1, "max_mean_kl": 0.1, "min_top1_agreement": 0.3}


def test_files_list_every_file_with_size_and_hash(artifact: Path) -> None:
    m = read_manifest(artifact)
    names = sorted(f["name"] for f in m["files"])
    on_disk = sorted(p.name for p in artifact.iterdir() if p.name != MANIFEST_NAME)
    assert names == on_disk
    assert {
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "generation_config.json",
    } <= set(names)
    for entry in m["files"]:
        path = artifact / entry["name"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256_file(path)


def test_chat_template_travels_with_the_artifact(artifact: Path) -> None:
    config = json.loads((artifact / "tokenizer_config.json").read_text())
    template = config.get("chat_template") or (artifact / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template


def test_verify_passes_on_an_untouched_artifact(artifact: Path) -> None:
    report = verify(artifact)
    assert report.passed and len(report.ok) == len(read_manifest(artifact)["files"])
    result = CliRunner().invoke(cli, ["verify", str(artifact)])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: {len(report.ok)} files match {artifact}/edgerun.json\n"


def test_verify_reports_a_changed_file(copy: Path) -> None:
    with open(copy / "model.onnx", "r+b") as fh:  # same size, one byte different
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = CliRunner().invoke(cli, ["verify", str(copy)])
    assert result.exit_code == 1
    assert result.stdout == "changed: model.onnx\n"
    assert result.stderr == (
        f"error: {copy} differs from its manifest in 1 file(s) (re-export it, or restore the files)\n"
    )


def test_verify_reports_missing_and_extra_files(copy: Path) -> None:
    (copy / "tokenizer.json").unlink()
    (copy / "notes.txt").write_text("hello")
    report = verify(copy)
    assert report.missing == ["tokenizer.json"] and report.extra == ["notes.txt"]
    result = CliRunner().invoke(cli, ["verify", "--json", str(copy)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (
        data["passed"] is False
        and data["missing"] == ["tokenizer.json"]
        and data["extra"] == ["notes.txt"]
    )


def test_verify_refuses_a_directory_without_manifest(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not an edgerun artifact (no edgerun.json)" in result.stderr
