"""The compact fidelity reference shipped with every validated artifact, and `edgerun verify
--fidelity`, which scores the artifact on the machine it runs on against it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import read_manifest, write_manifest
from edgerun.exporters.fidelity_check import score_rows
from edgerun.exporters.validate import Thresholds, log_softmax
from edgerun.runtime.fidelity import (
    REFERENCE_FILE,
    FidelityReference,
    build_reference,
    read_reference,
    write_reference,
)
from tests.runtime_helpers import damage_int4_scales, rehash

TINY_GATE = Thresholds(max_ppl_ratio=1.1, max_mean_kl=0.1, min_top1_agreement=0.3)


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, short_eval_text: Path
) -> Iterator[dict[str, Path]]:
    """The tiny llama exported and validated to onnx-fp32 and onnx-int4, once for the module."""
    from edgerun.exporters import export

    out = tmp_path_factory.mktemp("fidelity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_HOME", str(out / ".home"))
        results = export(
            str(tiny_llama),
            ["onnx-fp32", "onnx-int4"],
            out / "art",
            eval_text=short_eval_text,
            thresholds=TINY_GATE,
            progress=False,
            probe=False,
        )
        assert all(r.written and r.passed for r in results), [r.reason for r in results]
        yield {r.format: Path(str(r.path)) for r in results}


def verify_cli(artifact: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["verify", "--fidelity", str(artifact), *extra])


def test_an_export_ships_the_reference_top_k_of_the_pytorch_model(
    artifacts: dict[str, Path], tiny_llama: Path
) -> None:
    from tests.runtime_helpers import torch_logits, torch_model

    artifact = artifacts["onnx-int4"]
    manifest = read_manifest(artifact)
    block = manifest["fidelity"]
    assert REFERENCE_FILE in {f["name"] for f in manifest["files"]}  # hashed with the rest
    assert (artifact / REFERENCE_FILE).stat().st_size < 200_000
    assert (block["segments"], block["scored_tokens"], block["top_k"]) == (4, 128, 64)
    ref = read_reference(artifact / REFERENCE_FILE)
    model = torch_model(tiny_llama)
    for s, tokens in enumerate(ref.tokens):
        logprobs = log_softmax(np.asarray(torch_logits(model, [int(t) for t in tokens])))
        rows = logprobs[ref.context - 1 : -1]
        assert ref.top_ids[s, :, 0].tolist() == rows.argmax(-1).tolist()
        top = np.take_along_axis(rows, ref.top_ids[s].astype(np.int64), axis=-1)
        np.testing.assert_allclose(ref.top_logprobs[s], top, atol=1e-4)
        targets = rows[np.arange(len(rows)), tokens[ref.context :]]
        np.testing.assert_allclose(ref.target_logprob[s], targets, atol=1e-4)
    export = block["export"]  # the build machine's score, recorded at export
    assert export["tokens"] == 128 and 0 < export["mean_kl"] < TINY_GATE.max_mean_kl
    assert block["bound"]["max_mean_kl"] == TINY_GATE.max_mean_kl


def test_verify_fidelity_on_the_host_matches_the_export(artifacts: dict[str, Path]) -> None:
    result = verify_cli(artifacts["onnx-int4"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    device, export = data["fidelity"]["device"], data["fidelity"]["export"]
    assert data["passed"] and data["fidelity"]["reasons"] == []
    for key in ("mean_kl", "top1_agreement", "ppl_ratio"):
        assert device[key] == pytest.approx(export[key], rel=1e-5, abs=1e-9)
    assert device["backend"] == "onnxruntime" and device["machine"]["arch"]
    text = verify_cli(artifacts["onnx-int4"])
    assert text.exit_code == 0 and "ok: within the manifest's bound" in text.output


def test_fp32_scores_as_the_reference_so_the_forced_tokens_line_up(
    artifacts: dict[str, Path],
) -> None:
    # one position off and every row would be scored against another token's distribution
    data = json.loads(verify_cli(artifacts["onnx-fp32"], "--json").stdout)["fidelity"]
    assert abs(data["device"]["mean_kl"]) < 1e-5
    assert data["device"]["top1_agreement"] == 1.0
    assert data["device"]["ppl_ratio"] == pytest.approx(1.0, abs=1e-4)


def test_the_tune_gate_scores_settings_against_the_shipped_reference(
    artifacts: dict[str, Path],
) -> None:
    """edgerun tune's check of a setting that changes outputs (here fp32 instead of int8
    MatMulNBits compute) scores the artifact on this machine against its shipped reference."""
    from edgerun.backends.base import resolve_artifact
    from edgerun.backends.ort_accuracy import graph_levels
    from edgerun.tune.fidelity import FidelityGate, reference_kl
    from edgerun.tune.space import build_arm
    from edgerun.tune.topology import Topology

    topology = Topology(cpus=[0], clusters=[[0]], one_per_core=[0])
    int4, fp32 = artifacts["onnx-int4"], artifacts["onnx-fp32"]
    levels = graph_levels(resolve_artifact(int4).model_file)
    arm = build_arm(int4, "onnx-int4", "onnxruntime", topology, 1, 0.05, levels)
    default = reference_kl(arm, arm.default())
    exact = build_arm(fp32, "onnx-fp32", "onnxruntime", topology, 1)
    assert default is not None and default > 1e-4  # int4 is off the reference model...
    assert abs(float(reference_kl(exact, exact.default()) or 0.0)) < 1e-5  # ...fp32 is on it
    level_one = {**arm.default(), "accuracy_level": 1}
    other = reference_kl(arm, level_one)
    assert other is not None and other != default
    gate = FidelityGate(0.05, arm)
    verdict = gate(arm, level_one)
    (check,) = gate.checks
    assert check["default_reference_kl"] == pytest.approx(default)
    assert (verdict is None) == (other <= default + check["bound"])


def test_int4_with_wrong_scales_is_flagged(artifacts: dict[str, Path], tmp_path: Path) -> None:
    artifact = tmp_path / "onnx-int4"
    shutil.copytree(artifacts["onnx-int4"], artifact)
    damage_int4_scales(artifact, 3.0)
    result = verify_cli(artifact)
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"error: {artifact} on this device: ")
    assert "PPL ratio" in error and "mean KL" in error and "(export: mean KL" in error, error
    data = json.loads(verify_cli(artifact, "--json").stdout)
    assert not data["passed"] and data["fidelity"]["device"]["mean_kl"] > 0.1


def _reference(**changes: Any) -> FidelityReference:
    """A valid reference over random log-probs (3 windows of 64 tokens, vocabulary 50, k 8),
    with `changes` replacing its fields."""
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 50, 64) for _ in range(3)]
    logprobs = [log_softmax(rng.normal(size=(63, 50))) for _ in windows]
    ref = build_reference(windows, logprobs, top_k=8)
    return FidelityReference(**{**ref.__dict__, **changes})


def _rewritten(**changes: Any) -> Any:
    return lambda path: write_reference(path, _reference(**changes))


GOOD = _reference()
DAMAGES: dict[str, tuple[Any, str]] = {
    "not a zip": (lambda p: p.write_bytes(b"not a zip file"), "not a readable .npz"),
    "zeros": (lambda p: p.write_bytes(b"\0" * 64), "not a readable .npz"),
    "truncated": (lambda p: _truncate(p, 300), "not a readable .npz"),
    "oversized": (lambda p: _truncate(p, (8 << 20) + 1), "too large for a fidelity reference"),
    "other members": (lambda p: np.savez(p, header=np.zeros(2)), "it holds header.npy"),
    "pickled object": (lambda p: _with_member(p, "tokens", np.array([None])), "readable .npz"),
    "ids out of range": (_rewritten(top_ids=GOOD.top_ids + 1000), "outside the vocabulary"),
    "unsorted": (_rewritten(top_logprobs=GOOD.top_logprobs[..., ::-1].copy()), "not sorted"),
    "positive log-prob": (_rewritten(tail_logprob=GOOD.tail_logprob + 5), "<= 0"),
    "short tokens": (_rewritten(tokens=GOOD.tokens[:, :3]), "tokens has shape"),
    "wrong dtype": (_rewritten(top_ids=GOOD.top_ids.astype(np.int64)), "top_ids is int64"),
}


@pytest.mark.parametrize("damage, message", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_bad_reference_file_is_one_line(tmp_path: Path, damage: Any, message: str) -> None:
    path = tmp_path / REFERENCE_FILE
    write_reference(path, GOOD)
    assert read_reference(path).scored_tokens == 3 * 32  # the undamaged file reads
    damage(path)
    with pytest.raises(EdgerunError) as caught:
        read_reference(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def _with_member(path: Path, name: str, value: np.ndarray) -> None:
    """Rewrite the .npz with member `name` replaced (np.savez pickles object arrays)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[name] = value
    np.savez(path, **arrays)


def test_verify_fidelity_reports_a_corrupt_shipped_reference_in_one_line(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    artifact = tmp_path / "onnx-int4"
    shutil.copytree(artifacts["onnx-int4"], artifact)
    (artifact / REFERENCE_FILE).write_bytes(b"PK\x03\x04" + b"x" * 100)
    rehash(artifact)
    result = verify_cli(artifact)
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "is not a valid fidelity reference" in last
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "block, message",
    [
        (None, "ships no fidelity reference"),  # as an export with --no-validate writes it
        ({"reference": REFERENCE_FILE, "bound": {"max_mean_kl": "0.1"}}, "fidelity.bound must"),
        ({"reference": "../../etc/passwd", "bound": TINY_GATE.__dict__}, "points outside"),
        (
            {"reference": REFERENCE_FILE, "bound": TINY_GATE.__dict__, "export": {"mean_kl": []}},
            "fidelity.export must hold the numbers",
        ),
    ],
)
def test_a_bad_fidelity_block_is_refused_in_one_line(
    artifacts: dict[str, Path], tmp_path: Path, block: Any, message: str
) -> None:
    artifact = tmp_path / "onnx-int4"
    shutil.copytree(artifacts["onnx-int4"], artifact)
    manifest = read_manifest(artifact)
    manifest.pop("schema_version")
    manifest["fidelity"] = block
    write_manifest(artifact, manifest)
    result = verify_cli(artifact)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def test_top_k_kl_is_a_lower_bound_of_the_full_kl_and_exact_at_full_k() -> None:
    rng = np.random.default_rng(1)
    windows = [rng.integers(0, 40, 48) for _ in range(4)]
    ref_lp = [log_softmax(2 * rng.normal(size=(47, 40))) for _ in windows]
    cand_logits = [lp + 0.5 * rng.normal(size=lp.shape) for lp in ref_lp]

    def both(k: int) -> tuple[float, float]:
        ref = build_reference(windows, ref_lp, top_k=k)
        start = ref.context - 1
        rows = [cand_logits[i][start : start + ref.top_ids.shape[1]] for i in range(4)]
        full = np.mean(
            [
                (np.exp(r) * (r - log_softmax(c))).sum(-1)
                for i in range(4)
                for r, c in [(ref_lp[i][start : start + ref.top_ids.shape[1]], rows[i])]
            ]
        )
        return score_rows(ref, rows)["mean_kl"], float(full)

    top8, full = both(8)
    assert 0 < top8 < full
    exact, full = both(40)
    assert exact == pytest.approx(full, rel=1e-6)
