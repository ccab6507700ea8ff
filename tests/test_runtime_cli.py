"""`edgerun run`: streamed text on stdout, one stats line on stderr, stdin prompts, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import edgerun
from edgerun.cli import cli
from tests.runtime_helpers import PROFILE, export_artifact


@pytest.fixture(scope="module")
def artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_artifact(tiny_llama, "onnx-fp32", tmp_path_factory.mktemp("cli") / "ort")


def _expected(artifact: Path, prompt: str, chat: bool = False, **kw: object) -> str:
    with edgerun.load(artifact, PROFILE) as m:
        chunks = (
            m.chat([{"role": "user", "content": prompt}], **kw)
            if chat
            else m.generate(prompt, **kw)
        )
        return "".join(c.text for c in chunks)


def test_run_streams_text_then_a_stats_line(artifact: Path) -> None:
    result = CliRunner().invoke(
        cli, ["run", str(artifact), "The quick", "--profile", PROFILE, "-n", "8", "--ignore-eos"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == _expected(artifact, "The quick", max_tokens=8, ignore_eos=True) + "\n"
    (line,) = result.stderr.splitlines()
    assert line.startswith("[onnxruntime CPUExecutionProvider threads=")
    assert f"profile={PROFILE}] prompt " in line and "generated 8 tok, decode " in line
    assert line.endswith("finish length")


def test_run_reads_the_prompt_from_stdin_and_samples_with_a_seed(artifact: Path) -> None:
    args = [
        "run",
        str(artifact),
        "-",
        "--profile",
        PROFILE,
        "-n",
        "12",
        "-t",
        "0.9",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "4",
        "--ignore-eos",
    ]
    first = CliRunner().invoke(cli, args, input="In 1969")
    second = CliRunner().invoke(cli, args, input="In 1969")
    assert first.exit_code == 0, first.output
    expected = _expected(
        artifact,
        "In 1969",
        max_tokens=12,
        temperature=0.9,
        top_k=20,
        top_p=0.9,
        seed=4,
        ignore_eos=True,
    )
    assert first.stdout == second.stdout == expected + "\n"


def test_run_chat_and_threads(artifact: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(artifact),
            "Hi",
            "--chat",
            "--profile",
            PROFILE,
            "-n",
            "5",
            "--threads",
            "1",
            "--ignore-eos",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        result.stdout == _expected(artifact, "Hi", chat=True, max_tokens=5, ignore_eos=True) + "\n"
    )
    assert "threads=1 " in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-n", "0"],
            "error: max_tokens must be at least 1, got 0 (pass --max-tokens 1 or more)\n",
        ),
        (["--top-p", "0"], "error: top_p must be in (0, 1], got 0.0 (use 1.0 to disable top-p)\n"),
        (
            ["--context", "4", "-n", "8"],
            "error: the prompt (5 tokens) plus max_tokens (8) exceed the context length 4 (shorten the prompt, lower --max-tokens, pass --truncate left, or a larger --context)\n",
        ),
    ],
)
def test_run_errors_are_one_line(artifact: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        cli, ["run", str(artifact), "The quick", "--profile", PROFILE, *args]
    )
    assert result.exit_code == 2
    assert result.stderr == message


def test_run_unknown_profile_and_missing_artifact(artifact: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(artifact), "x", "--profile", "nope"])
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: unknown profile 'nope' (known profiles: "
    )
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "missing"), "x", "--profile", PROFILE])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"error: {tmp_path / 'missing'} does not exist (pass an artifact directory, .gguf or .onnx file)\n"
    )


def test_run_over_an_export_directory_picks_the_format_the_profile_prefers(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """OUT/ holds onnx-fp32 and gguf-q8_0: a profile preferring GGUF runs gguf-q8_0, one
    preferring ONNX runs onnx-fp32 (stderr says why); a profile preferring neither runs the
    first exported one that passed, and says so."""
    out = tmp_path / "out"
    export_artifact(tiny_llama, "onnx-fp32", out)
    export_artifact(tiny_llama, "gguf-q8_0", out)
    for profile, picked in (("raspberry-pi-5", "gguf-q8_0"), ("generic-x86_64", "onnx-fp32")):
        with edgerun.load(out, profile) as model:
            assert model.info.format == picked, model.info.artifact_reason
            assert model.info.artifact_reason is not None
    result = CliRunner().invoke(cli, ["run", str(out), "Hi", "--profile", "jetson-orin", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "none of profile jetson-orin's preferred formats" in result.stderr


def test_one_load_of_an_export_directory_detects_the_machine_once(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The format pick and the backend choice share one resolved profile."""
    import edgerun.device.resolve as resolve

    out = tmp_path / "out"
    export_artifact(tiny_llama, "onnx-fp32", out)
    calls = []
    real = resolve.detect
    monkeypatch.setattr(resolve, "detect", lambda: calls.append(1) or real())
    with edgerun.load(out) as model:
        assert model.info.format == "onnx-fp32"
        assert model.info.profile_reason.startswith("auto-detected")
    assert len(calls) == 1
