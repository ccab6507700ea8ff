"""Bad arguments and damaged side files give one-line errors, never tracebacks."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.core.integrity import sha256_file
from edgerun.text.sampling import SamplingParams

runner = CliRunner()


def one_line_error(args: list[str], **kwargs: object) -> str:
    result = runner.invoke(cli, args, **kwargs)  # type: ignore[arg-type]
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"seed": -1}, "seed must be between 0 and 2^63-1, got -1"),
        ({"seed": 2**64}, "seed must be between 0 and 2^63-1"),
        ({"temperature": float("inf")}, "temperature must be >= 0 and finite, got inf"),
        ({"temperature": float("nan")}, "temperature must be >= 0 and finite, got nan"),
        ({"top_p": float("nan")}, "top_p must be in (0, 1]"),
    ],
)
def test_sampling_arguments(params: dict[str, float], message: str) -> None:
    with pytest.raises(EdgerunError) as info:
        SamplingParams(**params).check()  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--threads", "-1"], "error: threads must be at least 1, got -1"),
        (["--context", "0"], "error: context must be at least 1, got 0"),
    ],
)
def test_run_refuses_bad_counts_first(tmp_path: Path, option: list[str], message: str) -> None:
    assert one_line_error(["run", str(tmp_path / "none"), "hi", *option]).startswith(message)


def test_non_utf8_prompts(tmp_path: Path) -> None:
    out = one_line_error(["run", str(tmp_path), "-"], input=b"caf\xe9")
    assert out.startswith("error: the prompt on stdin is not valid UTF-8 text")
    out = one_line_error(["run", str(tmp_path), "caf\udce9"])  # how argv bytes arrive
    assert out.startswith("error: the prompt is not valid UTF-8 text")


@pytest.mark.parametrize("config", ["[1, 2]", "42", '"x"', "\xff", "[" * 100_000])
def test_source_config_not_a_json_object(tmp_path: Path, config: str) -> None:
    (tmp_path / "config.json").write_bytes(config.encode("utf-8", "surrogateescape"))
    out = one_line_error(["pull", str(tmp_path)])
    assert str(tmp_path / "config.json") in out
    one_line_error(["info", str(tmp_path)])


@pytest.mark.parametrize("marker", ["{not json", "[]", '{"kind": 3}', "\udcff"])
def test_corrupt_cache_marker(tmp_path: Path, edgerun_home: Path, marker: str) -> None:
    src = tmp_path / "fake.gguf"
    src.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    entry = edgerun_home / "models" / f"gguf--fake--{sha256_file(src)[:12]}"
    entry.mkdir(parents=True)
    (entry / ".edgerun-source.json").write_bytes(marker.encode("utf-8", "surrogateescape"))
    out = one_line_error(["pull", str(src)])
    assert out.endswith(f"(rebuild it with: edgerun pull --refresh {src.resolve()})\n")


def test_truncated_safetensors_header(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    out = one_line_error(["info", str(tmp_path)])
    assert "model.safetensors is truncated" in out
