"""The default context is sized from the device profile's memory budget: weights + KV cache +
overhead must fit (a 4096 context for an 8B model on an 8 GB board is a trap). Fake artifacts
(config.json and a sparse model file of the real size) and fake profiles; nothing is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerun.backends.base import Artifact
from edgerun.backends.select import CONTEXT_STEP, RUNTIME_OVERHEAD, choose_context
from edgerun.device.profile import get_profile

MB = 2**20
# Llama-3.1-8B's attention: 32 layers x 8 KV heads x 128 = 128 KiB a position in f16
LLAMA_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_size": 4096, "max_position_embeddings": 131072}  # fmt: skip


def _artifact(tmp_path: Path, family: str, precision: str, weights: int) -> Artifact:
    path = tmp_path / f"{family}-{precision}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    name = "model.gguf" if family == "gguf" else "model.onnx"
    with open(path / name, "wb") as fh:
        fh.truncate(weights)  # sparse: the size without the bytes
    manifest = {"family": family, "format": f"{family}-{precision}", "precision": precision}
    return Artifact(path, path / name, manifest)


def _profile(tmp_path: Path, budget_mb: int) -> object:
    path = tmp_path / f"board-{budget_mb}.toml"
    path.write_text(
        f'id = "board"\nname = "Board"\ndescription = "test"\nmemory_budget_mb = {budget_mb}\n'
        '[match]\narch = ["x86_64"]\n[[backends]]\nname = "onnxruntime"\n'
    )
    return get_profile(str(path))


def test_an_8b_onnx_int4_on_an_8gb_board_gets_the_context_that_fits(tmp_path: Path) -> None:
    """ONNX keeps its KV cache in fp32 (256 KiB a position for this shape): 4096 positions
    (1 GiB) would not fit next to 5.5 GB of weights in a 6,500 MB budget."""
    weights = 5500 * MB
    artifact = _artifact(tmp_path, "onnx", "int4", weights)
    context, why = choose_context(artifact, _profile(tmp_path, 6500), None)
    per_token = 2 * 32 * 8 * 128 * 4
    fits = (6500 * MB - weights - RUNTIME_OVERHEAD) // per_token
    assert context == fits // CONTEXT_STEP * CONTEXT_STEP == 1792
    assert weights + context * per_token + RUNTIME_OVERHEAD <= 6500 * MB
    assert why.startswith("sized to profile 'board': its 6500 MiB budget less 5500 MiB of weights")
    assert "1792 positions (256 KiB each)" in why and "the model's is 4096" in why


def test_a_roomy_budget_keeps_the_capped_trained_context(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path, "gguf", "q4_k_m", 4900 * MB)
    context, why = choose_context(artifact, _profile(tmp_path, 16000), None)
    assert (context, why) == (4096, "the model's trained context (131072) capped at 4096")


def test_gguf_kv_is_half_precision(tmp_path: Path) -> None:
    """The same budget holds twice the positions of f16 KV as of fp32."""
    onnx = _artifact(tmp_path, "onnx", "int4", 5000 * MB)
    gguf = _artifact(tmp_path, "gguf", "q4_k_m", 5000 * MB)
    profile = _profile(tmp_path, 5900)
    small, _ = choose_context(onnx, profile, None)
    large, _ = choose_context(gguf, profile, None)
    assert small is not None and large is not None
    assert large == 2 * small


def test_an_asked_context_and_no_profile_are_left_alone(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path, "onnx", "int4", 5500 * MB)
    assert choose_context(artifact, _profile(tmp_path, 6000), 8192) == (8192, "asked for")
    assert choose_context(artifact, None, None)[0] == 4096


@pytest.mark.parametrize("budget_mb", [5600, 5000])
def test_past_the_shortest_context_the_budget_check_decides(tmp_path: Path, budget_mb: int) -> None:
    """Too little room even for 512 positions: 512 is chosen and the load's budget check then
    refuses with the numbers (tests/test_runtime_backends.py)."""
    artifact = _artifact(tmp_path, "onnx", "int4", 5500 * MB)
    context, why = choose_context(artifact, _profile(tmp_path, budget_mb), None)
    assert context == 512 and why.startswith("sized")


def test_a_context_past_the_trained_one_warns(tmp_path: Path) -> None:
    """context=100000 on a model trained for 131072 passes; on one trained for 8192 it warns,
    read from config.json or, for a bare GGUF, from its header."""
    from edgerun.backends.select import asked_warnings

    artifact = _artifact(tmp_path, "onnx", "int4", 1000)
    assert asked_warnings(artifact, None, 100_000) == []
    (artifact.path / "config.json").write_text(
        json.dumps({**LLAMA_8B, "max_position_embeddings": 8192})
    )
    (warning,) = asked_warnings(artifact, None, 100_000)
    assert warning.startswith("context=100000 is longer than the 8192 positions the model")
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bare" / "model.gguf"
    path.parent.mkdir()
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(8192)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    bare = Artifact(path.parent, path, {"family": "gguf", "format": "gguf", "bare_file": True})
    assert [w[:40] for w in asked_warnings(bare, None, 100_000)] == [warning[:40]]
    assert asked_warnings(bare, None, 4096) == []


class _Loaded:
    """A loaded backend as choose_context sees it: what its load added to the process."""

    name = "onnxruntime"

    def __init__(self, loaded: int) -> None:
        self.loaded_bytes = loaded


def test_weights_copied_at_load_size_the_context_as_loaded(tmp_path: Path) -> None:
    """ONNX Runtime prepacks MatMulNBits weights into its own layout: a 1.5B onnx-int8 (1,672
    MiB file) held 1.25x its file once loaded. Sizing by the file would leave the KV cache room
    that the copy already took."""
    weights = 4000 * MB
    artifact = _artifact(tmp_path, "onnx", "int8", weights)
    profile = _profile(tmp_path, 6500)
    by_file, _ = choose_context(artifact, profile, None)
    small_copy, _ = choose_context(artifact, profile, None, _Loaded(weights + 10 * MB))
    context, why = choose_context(artifact, profile, None, _Loaded(5000 * MB))
    per_token = 2 * 32 * 8 * 128 * 4
    assert by_file == small_copy == 4096  # 10 MiB past the file is the session's own
    assert context == (6500 * MB - 5000 * MB - RUNTIME_OVERHEAD) // per_token // 256 * 256 == 3840
    assert "5000 MiB of weights as loaded" in why
    assert choose_context(artifact, profile, 2048, _Loaded(5000 * MB)) == (2048, "asked for")
