"""--extra-option TARGET.KEY=VALUE: parsed and refused in one line before any work, passed on to
llama.cpp's quantizer and onnxruntime-genai's builder, recorded in the manifest; and export's
--help in sections."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.exporters.extra_options import GENAI_RESERVED, check_targets, parse_extra


def test_pairs_parse_by_target() -> None:
    got = parse_extra(
        ["genai.exclude_embeds=true", "llama.pure=1", "llama.output_tensor_type=Q8_0"]
    )
    assert got == {
        "genai": {"exclude_embeds": "true"},
        "llama": {"pure": "1", "output_tensor_type": "Q8_0"},
    }
    assert parse_extra([]) == {}


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("pure=true", "is not TARGET.KEY=VALUE"),
        ("llama.pure", "is not TARGET.KEY=VALUE"),
        ("ort.level=1", "unknown target 'ort'"),
        ("genai.hf_remote=true", "genai.hf_remote is set by edgerun itself"),
        ("llama.pure=maybe", "expected true or false"),
        ("llama.nthread=4", "not a quantizer option edgerun passes on"),
        ("llama.output_tensor_type=q9_9", "not a ggml type"),
        ("edgerun.onnx_stream=sometimes", "expected true or false"),
        ("edgerun.fast=true", "not an option of edgerun's writer"),
    ],
)
def test_bad_pairs_are_one_line_errors(pair: str, message: str) -> None:
    with pytest.raises(EdgerunError, match=message) as err:
        parse_extra([pair])
    assert "\n" not in err.value.message and err.value.hint


def test_options_no_requested_format_would_use_are_refused() -> None:
    with pytest.raises(EdgerunError, match="no gguf format was requested"):
        check_targets({"llama": {"pure": "true"}}, {"onnx"})
    check_targets({"llama": {"pure": "true"}}, {"onnx", "gguf"})


def test_genai_options_reach_the_builder_and_never_override_edgerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime_genai")
    import onnxruntime_genai.models.builder as builder

    from edgerun.exporters.onnx import genai

    seen: dict[str, Any] = {}
    monkeypatch.setattr(builder, "create_model", lambda *a, **kw: seen.update(kw))
    options = SimpleNamespace(extra={"genai": {"exclude_embeds": "true"}})
    ctx = SimpleNamespace(
        checkpoint=SimpleNamespace(path=tmp_path), scratch=tmp_path, options=options
    )
    genai.run_builder(ctx, tmp_path / "out")  # type: ignore[arg-type]
    assert seen["exclude_embeds"] == "true"
    assert seen["hf_remote"] is False and seen["hf_token"] == "false"
    assert {"hf_remote", "hf_token"} <= set(GENAI_RESERVED)


def _gguf_types(out: Path) -> dict[str, int]:
    manifest = json.loads((out / "gguf-q4_0" / "edgerun.json").read_text())
    return manifest["gguf"]["tensor_types"]


def test_a_llama_option_reaches_the_quantizer_and_the_manifest(
    tiny_llama: Path, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    args = [str(tiny_llama), "-f", "gguf-q4_0", "--no-probe", "--no-imatrix", "--max-kl", "5"]
    done = CliRunner().invoke(cli, ["export", *args, "-o", str(tmp_path / "plain")])
    assert done.exit_code == 0, done.output
    option = ["--extra-option", "llama.token_embedding_type=f16"]
    done = CliRunner().invoke(cli, ["export", *args, *option, "-o", str(tmp_path / "extra")])
    assert done.exit_code == 0, done.output
    assert "F16" not in _gguf_types(tmp_path / "plain")
    assert _gguf_types(tmp_path / "extra")["F16"] == 1  # the token embedding, kept in f16
    manifest = json.loads((tmp_path / "extra" / "gguf-q4_0" / "edgerun.json").read_text())
    assert manifest["export"]["options"]["extra"] == {"llama": {"token_embedding_type": "f16"}}


def test_an_unused_option_fails_before_any_work(tiny_llama: Path, tmp_path: Path) -> None:
    args = ["export", str(tiny_llama), "-f", "onnx-fp32", "-o", str(tmp_path / "o")]
    done = CliRunner().invoke(cli, [*args, "--extra-option", "llama.pure=true"])
    assert done.exit_code == 2
    assert "no gguf format was requested" in done.output
    assert not (tmp_path / "o").exists()


def test_export_help_lists_every_option_once_in_its_section() -> None:
    from edgerun.cli.export import HELP_GROUPS, export

    names = {p.name for p in export.params if isinstance(p, __import__("click").Option)}
    grouped = [n for names_ in HELP_GROUPS.values() for n in names_]
    assert len(grouped) == len(set(grouped)) and set(grouped) <= names
    text = CliRunner().invoke(cli, ["export", "--help"]).output
    for title in HELP_GROUPS:
        assert f"\n{title}:\n" in text
    assert text.count("--extra-option") == 1 and "\n  [SOURCE]" not in text
