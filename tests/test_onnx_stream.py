"""The streamed ONNX export (edgerun.exporters.onnx.stream) against the fp32-graph path it
replaces: the same graph and the same bytes, made without an fp32 graph on disk or in memory.

Memory itself is measured by the benchmark (benchmarks/results), not here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgerun.core.errors import EdgerunError
from edgerun.core.manifest import read_manifest
from edgerun.exporters.pipeline import export

pytest.importorskip("onnxruntime_genai")

FORMATS = ["onnx-fp32", "onnx-int8", "onnx-int4"]
# q4-head8: a mixed plan (8-bit lm_head and tied embedding); block 128 > hidden 64: MatMulNBits
# pads K and the tied embedding cannot share the lm_head's blocks (quantized on its own).
CASES = {
    "head8-asym": {"recipe": "q4-head8"},
    "sym-block128": {"recipe": "q4-pure", "symmetric": True, "block_size": 128},
}


def _export(ckpt: Path, out: Path, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
    # GPTQ (the default where its statistics fit) rounds on the streamed path only: the two
    # paths are compared with the importance-weighted search, which both have
    options = {"gptq": False, **options}
    results = export(
        str(ckpt),
        FORMATS,
        out,
        builder="genai",
        no_validate=True,
        probe=False,
        progress=False,
        keep_intermediates=True,
        extra={"edgerun": {"onnx_stream": stream}},
        **options,
    )
    assert all(r.written for r in results), [r.reason for r in results]
    return {r.format: r for r in results}


def _graph(artifact: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(artifact / "model.onnx"))
    nodes = {
        n.name: (
            n.op_type,
            n.domain,
            list(n.input),
            list(n.output),
            sorted((a.name, repr(helper.get_attribute_value(a))) for a in n.attribute),
        )
        for n in model.graph.node
    }
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return nodes, inits, model


def _logits(artifact: Path, ids: np.ndarray) -> np.ndarray:
    from edgerun.exporters.onnx.runner import onnx_logits_fn

    return onnx_logits_fn(artifact / "model.onnx", threads=1)(ids)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "llama-untied"])
def test_streamed_export_equals_the_fp32_graph_path(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, arch: str, case: str
) -> None:
    """Same nodes (names, ops, inputs, attributes), same initializers byte for byte (quantized
    blocks included), same manifest `quant`, same logits; and no fp32 graph was built."""
    ckpt = tiny_model_dirs[arch]
    streamed = _export(ckpt, tmp_path / "streamed", True, CASES[case])
    old = _export(ckpt, tmp_path / "old", False, CASES[case])
    ids = np.arange(3, 40, dtype=np.int64)
    for fmt in FORMATS:
        new_dir, old_dir = streamed[fmt].path, old[fmt].path
        new_nodes, new_inits, new_model = _graph(new_dir)
        old_nodes, old_inits, old_model = _graph(old_dir)
        assert new_nodes == old_nodes, fmt
        assert sorted(new_inits) == sorted(old_inits), fmt
        for name, array in old_inits.items():
            assert new_inits[name].dtype == array.dtype and np.array_equal(new_inits[name], array)
        assert {(o.domain, o.version) for o in new_model.opset_import} == {
            (o.domain, o.version) for o in old_model.opset_import
        }
        manifest, old_manifest = read_manifest(new_dir), read_manifest(old_dir)
        assert manifest["streamed"] == {"used": True, "fallback": None}
        assert old_manifest["streamed"]["used"] is False
        assert manifest["quant"] == old_manifest["quant"]
        np.testing.assert_allclose(_logits(new_dir, ids), _logits(old_dir, ids), atol=1e-6)
    scratch = [p for p in (tmp_path / "streamed").iterdir() if p.name.startswith(".")]
    assert scratch and not list(scratch[0].glob("genai-fp32*"))  # no fp32 graph on disk
    summary = streamed["onnx-int4"].manifest["quant"]["bits_summary"]
    assert summary.get("8") == (1 if case == "head8-asym" else None)  # the lm_head alone


@pytest.mark.parametrize("arch", ["llama", "llama-untied"])
def test_importance_weighted_rounding_streams_the_fp32_paths_bytes(
    tiny_model_dirs: dict[str, Path], tmp_path: Path, arch: str
) -> None:
    """--imatrix stays on the streamed path: the blocks are rounded with the importance
    statistics as they are written, byte for byte what re-rounding the fp32 graph's nodes gives
    (rounding.reround), with the same manifest note; and not RTN's bytes."""
    from edgerun.exporters.importance import IMPORTANCE_FILE

    def int4(out: Path, stream: bool, imatrix: bool) -> Any:
        (result,) = export(
            str(tiny_model_dirs[arch]), "onnx-int4", out, builder="genai", no_validate=True,
            probe=False, progress=False, recipe="q4-head8", imatrix=imatrix, gptq=False,
            extra={"edgerun": {"onnx_stream": stream}},
        )  # fmt: skip
        assert result.written, result.reason
        return result

    streamed, old = int4(tmp_path / "s", True, True), int4(tmp_path / "o", False, True)
    rtn = int4(tmp_path / "r", True, False)
    assert streamed.manifest["streamed"] == {"used": True, "fallback": None}
    assert old.manifest["streamed"]["used"] is False
    new_nodes, new_inits, _ = _graph(streamed.path)
    _, old_inits, _ = _graph(old.path)
    _, rtn_inits, _ = _graph(rtn.path)
    assert sorted(new_inits) == sorted(old_inits) == sorted(rtn_inits)
    for name, array in old_inits.items():
        assert np.array_equal(new_inits[name], array), name
    scales = [n for n in new_inits if n.endswith("_scales")]
    assert any(not np.array_equal(new_inits[n], rtn_inits[n]) for n in scales)
    note = streamed.manifest["quant"]["importance"]
    assert note == old.manifest["quant"]["importance"]
    matmuls = [n for n, node in new_nodes.items() if node[0] == "MatMulNBits"]
    assert note["rounding"]["nodes"] == len(matmuls) > 8 and note["rounding"]["nodes_rtn"] == 0
    assert 0 < note["rounding"]["weighted_error_vs_rtn"] < 1
    assert note["tokens"] >= 1024 and len(note["calibration_text_sha256"]) == 64
    assert (streamed.path / IMPORTANCE_FILE).is_file()
    assert "importance" not in rtn.manifest["quant"]


def test_what_streaming_does_not_cover_falls_back_and_says_why(
    tiny_llama: Path, tmp_path: Path
) -> None:
    (hqq,) = export(
        str(tiny_llama), "onnx-int4", tmp_path, builder="genai", algorithm="hqq",
        no_validate=True, probe=False, progress=False,
    )  # fmt: skip
    assert hqq.written
    streamed = read_manifest(hqq.path)["streamed"]  # type: ignore[arg-type]
    assert streamed["used"] is False and "hqq" in streamed["fallback"]
    (fp16,) = export(
        str(tiny_llama), "onnx-fp16", tmp_path / "fp16", no_validate=True, probe=False,
        progress=False,
    )  # fmt: skip
    assert read_manifest(fp16.path)["streamed"]["used"] is False  # type: ignore[arg-type]


def _safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 64]}},  # past the end
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}},  # size != shape
        {"w": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}},
        {"w": {"dtype": "F32", "shape": [2, 2]}},
        {"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}},
        ["not", "an", "object"],
    ],
    ids=["past-end", "size", "negative", "no-offsets", "dtype", "array"],
)
def test_mapped_weights_refuse_a_damaged_file(tmp_path: Path, header: Any) -> None:
    from edgerun.exporters.onnx.mapped import MappedWeights

    path = _safetensors(tmp_path / "model.safetensors", header, bytes(16))
    with pytest.raises(EdgerunError, match="model.safetensors"):
        MappedWeights([path])


def test_mapped_weights_are_the_file_bytes(tmp_path: Path) -> None:
    from edgerun.exporters.onnx.mapped import MappedWeights

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    weights = MappedWeights([_safetensors(tmp_path / "a.safetensors", header, array.tobytes())])
    np.testing.assert_array_equal(weights.tensors["w"].numpy(), array)
    weights.release()  # pages dropped, read again from the file
    np.testing.assert_array_equal(weights.tensors["w"].numpy(), array)
