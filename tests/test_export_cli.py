"""`edgerun export` through click: bad inputs, the gate, --force, --no-validate, interruptions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import read_manifest
from edgerun.exporters.formats import all_formats, parse_formats
from edgerun.exporters.validate import Thresholds

TINY_GATE = ["--max-ppl-ratio", "1.1", "--max-kl", "0.1", "--min-top1", "0.3"]


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgerun.exporters.reference import read_eval_text

    path = tmp_path_factory.mktemp("eval") / "eval.txt"
    path.write_text(read_eval_text(None)[:2000], encoding="utf-8")
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["export", *args])


def last_line(text: str) -> str:
    """The last line of stderr: the one-line verdict after the progress lines."""
    return text.splitlines()[-1] + "\n"


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_list_names_the_onnx_formats() -> None:
    result = run("--list")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:4] == ["onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int4"]


def test_unknown_format_suggests_the_closest(tiny_llama: Path, tmp_path: Path) -> None:
    result = run(str(tiny_llama), "-f", "onnx-fp32,onnx-int3", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: unknown format 'onnx-int3' (did you mean onnx-int8 or onnx-int4 or onnx-fp32?)\n"
    )
    assert not (tmp_path / "out").exists()
    result = run(str(tiny_llama), "-f", "tflite", "-o", str(tmp_path / "out"))
    assert result.stderr == (
        f"error: unknown format 'tflite' (valid formats: {', '.join(all_formats())})\n"
    )


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("gguf-Q4_K_M", "gguf-q4_k_m"),
        ("onnx_int4", "onnx-int4"),
        ("ONNX-FP32", "onnx-fp32"),
        ("q4_k_m", "gguf-q4_k_m"),  # a bare type that one family has
        (" gguf-q8_0 ", "gguf-q8_0"),
    ],
)
def test_format_names_are_not_case_or_separator_sensitive(spelled: str, canonical: str) -> None:
    pytest.importorskip("llama_cpp")
    assert parse_formats(spelled) == [canonical]


def test_a_withheld_gguf_type_names_its_reason() -> None:
    pytest.importorskip("llama_cpp")
    with pytest.raises(EdgerunError, match="'gguf-tq1_0' is not offered: for ternary"):
        parse_formats("gguf-tq1_0")
    assert parse_formats("gguf-IQ2_XXS") == ["gguf-iq2_xxs"]  # offered: exported with an imatrix


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--block-size", "48"],
            "block size 48 is not a power of two in 16-256 (use one of 16, 32, 64, 128, 256)",
        ),
        (
            ["--block-size", "512"],
            "block size 512 is not a power of two in 16-256 (use one of 16, 32, 64, 128, 256)",
        ),
        (
            ["--accuracy-level", "5"],
            "accuracy level 5 is out of range (use 0 (unset) or 1-4 (fp32, fp16, bf16, int8 compute))",
        ),
        (["--algorithm", "awq"], "unknown algorithm 'awq' (use rtn or hqq)"),
        (["--int8-mode", "static"], "unknown int8 mode 'static' (use one of weight-only, dynamic)"),
        (["--builder", "tvm"], "unknown builder 'tvm' (use one of auto, optimum, genai)"),
        (
            ["--algorithm", "hqq", "--symmetric"],
            "HQQ quantizes asymmetrically only (drop --symmetric, or use rtn)",
        ),
        (
            ["--algorithm", "gptq"],
            "algorithm 'gptq' needs a calibration data reader, which edgerun does not provide "
            "(use rtn (default) or hqq)",
        ),
    ],
)
def test_bad_options_are_refused_before_any_work(
    tiny_llama: Path, tmp_path: Path, option: list[str], message: str
) -> None:
    result = run(str(tiny_llama), "-f", "onnx-int4,onnx-int8", "-o", str(tmp_path / "out"), *option)
    assert result.exit_code == 2
    assert result.stderr == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_existing_output_directory_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "onnx-int4").mkdir()
    (tmp_path / "onnx-int4" / "keep.txt").write_text("mine")
    result = run(str(tiny_llama), "-f", "onnx-int4", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {tmp_path / 'onnx-int4'} already exists (pass --overwrite to replace it)\n"
    )
    assert (tmp_path / "onnx-int4" / "keep.txt").read_text() == "mine"


def test_eval_text_too_short_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    n = len(
        AutoTokenizer.from_pretrained(tiny_llama)(short.read_text(), add_special_tokens=False)[
            "input_ids"
        ]
    )
    result = run(
        str(tiny_llama), "-f", "onnx-fp32", "-o", str(tmp_path / "out"), "--eval-text", str(short)
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: the evaluation text has {n} tokens; validation needs at least 256 (pass a longer --eval-text file)\n"
    )
    assert _leftovers(tmp_path / "out") == []


def test_missing_eval_text_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    result = run(
        str(tiny_llama), "-f", "onnx-fp32", "-o", str(tmp_path / "o"), "--eval-text", "nope.txt"
    )
    assert result.exit_code == 2
    assert (
        result.stderr == "error: evaluation text not found: nope.txt (check the --eval-text path)\n"
    )


def test_unsupported_architecture_lists_the_supported_ones(
    tiny_llama: Path, tmp_path: Path
) -> None:
    odd = Path(shutil.copytree(tiny_llama, tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    config.update(model_type="oddformer", architectures=["OddformerForCausalLM"])
    (odd / "config.json").write_text(json.dumps(config))
    result = run(str(odd), "-f", "onnx-fp32", "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert re.fullmatch(
        r"error: optimum-onnx cannot export model type 'oddformer' as a decoder with KV cache "
        r"\(supported: [a-z0-9_, -]*\bllama\b[a-z0-9_, -]*\bqwen2\b[a-z0-9_, -]*\)\n",
        result.stderr,
    )
    genai = run(str(odd), "-f", "onnx-int4", "-o", str(tmp_path / "out"), "--builder", "genai")
    assert genai.exit_code == 2
    assert genai.stderr.startswith(
        "error: onnxruntime-genai's builder does not support OddformerForCausalLM"
    )


def test_genai_builder_refuses_formats_it_cannot_make(tiny_llama: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime_genai")
    result = run(str(tiny_llama), "-f", "onnx-fp16", "-o", str(tmp_path), "--builder", "genai")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --builder genai does not make onnx-fp16 "
        "(use it for onnx-fp32, onnx-int8, onnx-int4, or --builder optimum)\n"
    )


def test_gate_refusal_writes_nothing_and_exits_1(
    tiny_llama: Path, tmp_path: Path, eval_text: Path
) -> None:
    result = run(
        str(tiny_llama),
        "-f",
        "onnx-int4",
        "-o",
        str(tmp_path),
        "--builder",
        "optimum",
        "--eval-text",
        str(eval_text),
        "--max-kl",
        "0",
    )
    assert result.exit_code == 1
    assert re.fullmatch(
        r"error: onnx-int4 failed validation: mean KL [0-9.e-]+ > 0\.0; not written "
        r"\(try the default --recipe q4-mixed, or --target-kl 0\.1 \(more 8-bit layers\); or "
        r"pass --force to write it with passed: false\)\n",
        last_line(result.stderr),
    ), result.stderr
    assert "✓ quantize (onnx-int4, MatMulNBits 4-bit, rtn, recipe q4-mixed)" in result.stderr
    assert "FAIL, not written" in result.stdout
    assert _leftovers(tmp_path) == []


def test_force_writes_a_failing_artifact_marked_failed(
    tiny_llama: Path, tmp_path: Path, eval_text: Path
) -> None:
    result = run(
        str(tiny_llama),
        "-f",
        "onnx-int4",
        "-o",
        str(tmp_path),
        "--eval-text",
        str(eval_text),
        "--max-kl",
        "0",
        "--force",
    )
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"warning: onnx-int4 failed validation \(mean KL [0-9.e-]+ > 0\.0(; [^)]+)?\); written "
        r"anyway \(--force\)\n",
        last_line(result.stderr),
    )
    validation = read_manifest(tmp_path / "onnx-int4")["validation"]
    assert validation["passed"] is False and validation["reasons"][0].startswith("mean KL")
    assert "FAIL, forced" in result.stdout


def test_no_validate_writes_null_validation_and_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    result = run(str(tiny_llama), "-f", "onnx-fp32", "-o", str(tmp_path), "--no-validate", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: --no-validate: artifacts are written with validation: null\n"
    (entry,) = json.loads(result.stdout)
    assert entry["status"] == "not validated" and entry["passed"] is None
    assert read_manifest(tmp_path / "onnx-fp32")["validation"] is None


def test_json_output_and_overwrite(tiny_qwen2: Path, tmp_path: Path, eval_text: Path) -> None:
    args = [
        str(tiny_qwen2),
        "-f",
        "onnx-fp32",
        "-o",
        str(tmp_path),
        "--eval-text",
        str(eval_text),
        "--json",
        "--threads",
        "1",
        *TINY_GATE,
    ]
    first = run(*args)
    assert first.exit_code == 0, first.output
    (entry,) = json.loads(first.stdout)
    assert entry["format"] == "onnx-fp32" and entry["written"] and entry["passed"] is True
    assert entry["path"] == str(tmp_path / "onnx-fp32")
    assert set(entry["validation"]) >= {"ppl_ref", "ppl", "ppl_ratio", "mean_kl", "top1_agreement"}
    manifest = read_manifest(tmp_path / "onnx-fp32")
    assert manifest["export"]["options"]["threads"] == 1
    created = manifest["export"]["created"]
    again = run(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert read_manifest(tmp_path / "onnx-fp32")["export"]["created"] >= created
    assert _leftovers(tmp_path) == ["onnx-fp32"]


def test_ctrl_c_mid_export_leaves_nothing(
    tiny_llama: Path, tmp_path: Path, eval_text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgerun.exporters.onnx.quant as onnx_quant

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_quant, "quantize_weight_only", interrupted)
    result = run(
        str(tiny_llama),
        "-f",
        "onnx-fp32,onnx-int4",
        "-o",
        str(tmp_path),
        "--builder",
        "optimum",
        "--eval-text",
        str(eval_text),
        *TINY_GATE,
    )
    assert result.exit_code == 130
    assert last_line(result.stderr) == "Interrupted: nothing partial was kept.\n"
    # onnx-fp32 finished before the interruption and is complete; nothing else is left
    assert _leftovers(tmp_path) == ["onnx-fp32"]
    assert read_manifest(tmp_path / "onnx-fp32")["validation"]["passed"] is True


def test_exception_after_model_written_leaves_no_directory(
    tiny_llama: Path, tmp_path: Path, eval_text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgerun.exporters.pipeline as pipeline

    def disk_full(checkpoint: Path, artifact: Path) -> list[str]:
        assert (artifact / "model.onnx").is_file()  # the model was already written in the temp dir
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "copy_side_files", disk_full)
    (result,) = pipeline.export(
        str(tiny_llama), "onnx-fp32", tmp_path, eval_text=eval_text, progress=False
    )
    assert not result.written  # reported as a full disk, per format, not a traceback
    assert (result.reason or "").startswith(f"no space left on {tmp_path} (")
    assert _leftovers(tmp_path) == []


def test_a_family_that_cannot_load_is_listed_as_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgerun.exporters import formats

    monkeypatch.setattr(
        formats, "FAMILY_MODULES", {**formats.FAMILY_MODULES, "tflite": "edgerun.exporters.no_such"}
    )
    monkeypatch.setattr(formats, "FAMILIES", dict(formats.FAMILIES))
    monkeypatch.setattr(formats, "UNAVAILABLE", {})
    assert not any(f.startswith("tflite-") for f in formats.all_formats())
    why = (
        "edgerun.exporters.no_such cannot be imported: No module named 'edgerun.exporters.no_such'"
    )
    assert formats.UNAVAILABLE["tflite"] == why
    with pytest.raises(EdgerunError, match="format 'tflite-int8' is unavailable"):
        formats.family_of("tflite-int8")
    result = run("--list")
    assert result.exit_code == 0
    assert f"tflite-*: unavailable ({why})" in result.stdout.splitlines()


def test_hqq_int8_is_refused_early(tiny_llama: Path, tmp_path: Path) -> None:
    result = run(str(tiny_llama), "-f", "onnx-int8", "-o", str(tmp_path), "--algorithm", "hqq")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: HQQ's 8-bit MatMulNBits has float zero points, which onnxruntime's CPU kernel "
        "rejects (use --algorithm rtn for onnx-int8)\n"
    )


def test_a_format_that_errors_is_reported_and_the_others_are_kept(
    tiny_llama: Path, tmp_path: Path, eval_text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgerun.exporters.onnx import files as onnx_files

    def broken(src: Path) -> None:
        raise EdgerunError("fp16 cast failed", "try onnx-fp32")

    monkeypatch.setattr(onnx_files, "to_fp16", broken)
    args = ["-o", str(tmp_path), "--eval-text", str(eval_text), *TINY_GATE]
    result = run(str(tiny_llama), "-f", "onnx-fp16,onnx-fp32", *args)
    assert result.exit_code == 1
    assert last_line(result.stderr) == (
        "error: onnx-fp16 was not exported: fp16 cast failed (try onnx-fp32)\n"
    )
    assert _leftovers(tmp_path) == ["onnx-fp32"]


def test_keep_intermediates_keeps_the_fp32_graph(
    tiny_llama: Path, tmp_path: Path, eval_text: Path
) -> None:
    from edgerun.exporters.pipeline import export

    gate = Thresholds(max_ppl_ratio=1.1, max_mean_kl=0.1, min_top1_agreement=0.3)
    (r,) = export(
        str(tiny_llama),
        "onnx-int4",
        tmp_path,
        eval_text=eval_text,
        thresholds=gate,
        builder="optimum",
        keep_intermediates=True,
        progress=False,
    )
    assert r.written
    (scratch,) = [p for p in tmp_path.iterdir() if p.name.startswith(".edgerun-scratch-")]
    assert (scratch / "optimum-fp32" / "model.onnx").is_file()


def test_genai_build_keeps_onnx_ir_warnings_off_the_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The genai builder's onnx_ir warnings about intermediate graphs (seen on SmolLM2's shared
    int4 embedding) go into the build log, not to the terminal's logging handlers."""
    import logging

    from edgerun.exporters.onnx.genai import _capture

    with caplog.at_level(logging.WARNING), _capture() as log:
        logging.getLogger("onnx_ir.serde").warning("Input 'x' cannot be found in any scope.")
    assert "cannot be found in any scope" in log.getvalue()
    assert caplog.records == []
    assert logging.getLogger("onnx_ir").propagate is True


def test_a_profile_picks_formats_and_settings_and_says_why(tiny_llama, tmp_path):
    """--profile raspberry-pi-5: its preferred formats and [export] block_size / accuracy_level;
    an option given on the command line wins over the profile's, and the manifest records why."""
    from click.testing import CliRunner

    from edgerun.cli import cli
    from edgerun.core.manifest import read_manifest

    out = tmp_path / "out"
    args = ["export", str(tiny_llama), "-o", str(out), "--profile", "raspberry-pi-5"]
    args += ["--accuracy-level", "0", "--no-probe", "--max-kl", "5", "--max-ppl-ratio", "9"]
    args += ["--min-top1", "0"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    made = sorted(p.name for p in out.iterdir())
    assert made == ["gguf-q4_0", "gguf-q4_k_m", "onnx-int4"]  # the Pi 5's preferred_formats
    plan = read_manifest(out / "onnx-int4")["export"]["options"]["profile_plan"]
    assert plan["profile"] == "raspberry-pi-5"
    assert plan["settings"] == {"block_size": 32}  # accuracy_level was given: not the profile's
    assert any("accuracy_level: given on the command line" in r for r in plan["reasons"])
    quant = read_manifest(out / "onnx-int4")["quant"]
    assert quant["accuracy_level"] == 0 and quant["block_size"] == 32


def test_a_profile_whose_formats_this_install_lacks_is_one_line(tiny_llama, tmp_path, monkeypatch):
    from edgerun.core.errors import EdgerunError
    from edgerun.exporters import formats
    from edgerun.exporters.pipeline import export

    monkeypatch.setattr(formats, "all_formats", lambda: ["onnx-fp32"])
    with pytest.raises(EdgerunError, match="prefers gguf-q4_0, gguf-q4_k_m, onnx-int4, none of"):
        export(str(tiny_llama), None, tmp_path / "out", profile="raspberry-pi-5", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_export_looks_each_format_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """export() resolves the format names once at its entry and passes the Format objects down,
    with a device profile too (its plan is given the names, not asked to look them up again)."""
    from edgerun.exporters import formats, pipeline

    looked_up: list[str] = []
    real = formats.family_of
    monkeypatch.setattr(formats, "family_of", lambda name: looked_up.append(name) or real(name))
    if hasattr(pipeline, "family_of"):  # where the pipeline looked names up itself
        monkeypatch.setattr(pipeline, "family_of", formats.family_of)
    out = tmp_path / "out"
    (out / "gguf-q8_0").mkdir(parents=True)  # refused at the output check, before any work
    with pytest.raises(EdgerunError, match="gguf-q8_0 already exists"):
        pipeline.export("no/source", "onnx-fp32,GGUF-Q8_0", out, profile="generic-x86_64")
    assert looked_up == ["onnx-fp32", "gguf-q8_0"]
