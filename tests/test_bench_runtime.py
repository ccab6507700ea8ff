"""`edgerun bench` through the real runtime (edgerun.load) on exported artifacts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from tests.runtime_helpers import export_artifact


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("bench-artifacts")
    return [export_artifact(tiny_llama, fmt, out) for fmt in ("onnx-int4", "gguf-f16")]


def _bench(artifacts: list[Path], out: Path, *extra: str) -> dict:
    args = [
        "bench",
        *map(str, artifacts),
        "--reps",
        "2",
        "--warmup",
        "1",
        "--gen-tokens",
        "6",
        "--prompt-tokens",
        "8,24",
        "--threads",
        "1",
        "--idle-seconds",
        "0",
        "--json",
        str(out),
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "energy: null: " in result.output
    return json.loads(out.read_text())


def test_bench_real_runtime_on_tiny_artifacts(tiny_artifacts: list[Path], tmp_path: Path) -> None:
    run = _bench(tiny_artifacts, tmp_path / "r.json")["runs"][0]
    onnx, gguf = run["artifacts"]
    assert (onnx["backend"], onnx["providers"]) == ("onnxruntime", ["CPUExecutionProvider"])
    assert (gguf["backend"], gguf["providers"]) == ("llamacpp", ["CPU"])
    assert run["order"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for art, path in zip(run["artifacts"], tiny_artifacts, strict=True):
        assert art["threads"] == 1
        assert (
            art["manifest_sha256"]
            == hashlib.sha256((path / "edgerun.json").read_bytes()).hexdigest()
        )
        assert art["size_bytes"] == sum(
            f.stat().st_size for f in path.rglob("*") if f.name != "edgerun.json"
        )
        assert [r["prompt_tokens"] for r in art["reps"]] == [8, 24, 8, 24]
        for rep in art["reps"]:
            assert rep["gen_tokens"] == 6 and rep["decode_tok_s"] > 0 and rep["ttft_s"] > 0
            mem = rep["memory"]
            assert mem["peak_rss"] >= mem["rss"] and mem["file_backed"] + mem["anonymous"] > 0
            # the sampler and the kernel's high-water mark agree within 10%
            assert mem["vm_hwm"] is not None
            assert mem["peak_rss_sampled"] >= 0.9 * mem["vm_hwm"]
            assert mem["peak_rss"] == max(mem["peak_rss_sampled"], mem["vm_hwm"])
        assert art["summary"]["by_prompt"]["24"]["decode_tok_s"]["n"] == 2
    assert run["device"]["profile"]["id"]
    assert run["libraries"]["onnxruntime"]


def test_bench_ctx_is_checked_against_the_model(tiny_artifacts: list[Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["bench", str(tiny_artifacts[0]), "--ctx", "20", "--power", "none"]
    )
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: --prompt-tokens 512 + --gen-tokens 128 = 640 tokens exceed the context of 20"
    )


def test_no_decode_rate_exceeds_the_stream_roofline(tiny_artifacts: list[Path]) -> None:
    """Through edgerun.bench.run: every measured decode rate of a real artifact is below STREAM
    bandwidth / weight bytes read per token (the probe's threads are the bench's)."""
    import edgerun.bench
    from benchmarks.weights import touched_bytes
    from edgerun.bench.bandwidth import roofline_tok_s, stream

    run = edgerun.bench.run(
        tiny_artifacts, prompt_tokens=[8], gen_tokens=16, reps=2, threads=1, power="none",
        idle_seconds=0,
    )  # fmt: skip
    probe = stream(threads=1, array_mib=64, reps=3)  # small arrays keep the test quick
    assert probe["gb_s"] == max(probe["copy_gb_s"], probe["triad_gb_s"]) > 0
    for art, path in zip(run["artifacts"], tiny_artifacts, strict=True):
        roof = roofline_tok_s(probe["gb_s"], touched_bytes(path))
        assert roof is not None
        for rep in art["reps"]:
            assert 0 < rep["decode_tok_s"] < roof, (art["name"], rep["decode_tok_s"], roof)


@pytest.mark.slow
def test_bench_smollm2_gguf(smollm2_dir: Path, tmp_path: Path) -> None:
    art = export_artifact(smollm2_dir, "gguf-f16", tmp_path / "out")
    run = _bench([art], tmp_path / "r.json")["runs"][0]
    (entry,) = run["artifacts"]
    assert entry["backend"] == "llamacpp" and entry["context_length"] == 8192
    text = [r for r in entry["reps"] if r["prompt_tokens"] == 24]
    assert len(text) == 2 and all(r["gen_tokens"] == 6 for r in text)
