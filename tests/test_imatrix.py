"""Importance statistics: what the hooks measure, how they map to ONNX nodes and GGUF tensors,
and what llama.cpp's quantizer does with them and with per-tensor type overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edgerun.exporters.formats import ExportContext, ExportOptions, ReferenceModel  # noqa: E402
from edgerun.exporters.importance import (  # noqa: E402
    IMPORTANCE_FILE,
    Importance,
    collect,
    gather,
)

from edgerun.errors import EdgerunError  # noqa: E402
from edgerun.sources import Checkpoint  # noqa: E402


def _context(ckpt: Path, root: Path, **options) -> ExportContext:
    scratch = root / "scratch"
    scratch.mkdir(parents=True)
    checkpoint = Checkpoint(path=ckpt, source=str(ckpt), kind="local")
    opts = ExportOptions(progress=False, **options)
    return ExportContext(checkpoint, ReferenceModel(ckpt), opts, scratch)


def test_hooks_measure_the_mean_square_of_each_linear_input(tiny_llama):
    import torch

    ref = ReferenceModel(tiny_llama)
    ids = np.arange(40, dtype=np.int64) % 300
    values, tokens = collect(ref.model, [ids[:24], ids[24:]])
    assert tokens == 40
    names = {n for n, m in ref.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(values) == names
    with torch.inference_mode():  # the lm_head's input is the final hidden state
        hidden = [
            ref.model(input_ids=torch.from_numpy(w[None]), output_hidden_states=True)
            .hidden_states[-1][0]
            .double()
            for w in (ids[:24], ids[24:])
        ]
    expected = torch.cat(hidden).square().mean(0).float().numpy()
    assert values["lm_head"] == pytest.approx(expected, rel=1e-5)
    assert values["model.layers.1.mlp.down_proj"].shape == (128,)
    assert not any(m._forward_hooks for m in ref.model.modules())  # hooks removed


def test_statistics_are_gathered_once_per_export_and_map_to_graph_roles(tiny_llama, tmp_path):
    ctx = _context(tiny_llama, tmp_path)
    found = gather(ctx)
    saved = ctx.scratch / IMPORTANCE_FILE
    assert saved.is_file() and found.tokens >= 1024
    assert len(found.text_sha256) == 64
    again = gather(ctx)  # from the scratch file, not a second run
    assert again.tokens == found.tokens and set(again.values) == set(found.values)
    q = found.values["model.layers.0.self_attn.q_proj"]
    # optimum's node names and onnxruntime-genai's fused ones find the same input statistics
    assert found.for_node("/model/layers.0/self_attn/q_proj/MatMul") is not None
    assert np.array_equal(found.for_node("/model/layers.0/attn/qkv_proj/MatMul"), q)
    gate_up = found.for_node("/model/layers.1/mlp/gate_up_proj/MatMul")
    assert np.array_equal(gate_up, found.values["model.layers.1.mlp.gate_proj"])
    assert found.for_node("/model/rotary/MatMul") is None


def test_a_damaged_importance_file_is_one_line(tmp_path):
    bad = tmp_path / IMPORTANCE_FILE
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(EdgerunError, match="not an edgerun importance file"):
        Importance.load(bad)


def test_importance_weighted_onnx_int4_export_records_and_ships_it(tiny_llama, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgerun.exporters.pipeline import export

    results = export(
        str(tiny_llama), "onnx-int4", tmp_path / "out", imatrix=True, builder="optimum",
        progress=False, probe=False, recipe="q4-pure",
    )  # fmt: skip
    (result,) = results
    assert result.written, result.reason
    note = result.manifest["quant"]["importance"]
    assert note["file"] == IMPORTANCE_FILE and note["tokens"] >= 1024
    assert note["rounding"]["nodes"] == 15 and note["rounding"]["nodes_rtn"] == 0
    assert note["rounding"]["weighted_error_vs_rtn"] < 1.0
    assert (result.path / IMPORTANCE_FILE).is_file()
    assert IMPORTANCE_FILE in {f["name"] for f in result.manifest["files"]}


def _gguf_export(ctx: ExportContext, fmt: str, name: str) -> tuple[Path, dict]:
    from edgerun.exporters.gguf import FAMILY

    out = ctx.scratch.parent / name
    out.mkdir()
    FAMILY.check_options(fmt, ctx.options)
    return out, FAMILY.export(fmt, ctx, out)


@pytest.fixture(scope="module")
def gguf_ctx(tiny_llama, tmp_path_factory) -> ExportContext:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    return _context(tiny_llama, tmp_path_factory.mktemp("gguf"), imatrix=True)  # opt-in


def test_gguf_header_tensor_types_match_the_requested_overrides(gguf_ctx):
    from edgerun.exporters.gguf.imatrix import exact, written_types

    requested = {exact("blk.0.ffn_down.weight"): "q8_0", r"attn_v\.weight$": "q5_0"}
    gguf_ctx.options.extra["tensor_types"] = requested
    try:
        out, fields = _gguf_export(gguf_ctx, "gguf-q4_0", "overrides")
    finally:
        gguf_ctx.options.extra.clear()
    types = written_types(out / "model.gguf")
    assert types["blk.0.ffn_down.weight"] == "q8_0"
    assert types["blk.0.attn_v.weight"] == types["blk.1.attn_v.weight"] == "q5_0"
    assert types["blk.1.ffn_down.weight"] == types["blk.0.attn_q.weight"] == "q4_0"
    assert fields["quant"]["tensor_types"] == {"requested": requested, "verified": True}


def test_an_override_llama_cpp_cannot_write_is_one_line(gguf_ctx):
    gguf_ctx.options.extra["tensor_types"] = {r"attn_q\.weight$": "q6_k"}  # rows of 64 < 256
    try:
        with pytest.raises(EdgerunError, match=r"attn_q\\.weight\$ -> q6_k: blk.0.attn_q.weight"):
            _gguf_export(gguf_ctx, "gguf-q4_0", "fallback")
    finally:
        gguf_ctx.options.extra.clear()


def test_the_imatrix_reaches_llama_cpp_and_lowers_the_weighted_error(gguf_ctx):
    import dataclasses

    import gguf

    with_it, fields = _gguf_export(gguf_ctx, "gguf-q4_0", "with")
    assert fields["quant"]["imatrix"]["gguf_tensors"] == 14  # 2 x 7 projections (tied: no output)
    plain = dataclasses.replace(gguf_ctx.options, imatrix=False)
    ctx = dataclasses.replace(gguf_ctx, options=plain)
    without, fields = _gguf_export(ctx, "gguf-q4_0", "without")
    assert fields["quant"]["imatrix"] is None
    importance = gather(gguf_ctx).values["model.layers.0.mlp.down_proj"]
    source = {
        t.name: t for t in gguf.GGUFReader(gguf_ctx.scratch / "intermediate-f16.gguf").tensors
    }
    weight = np.asarray(source["blk.0.ffn_down.weight"].data, dtype=np.float32)
    errors = []
    for path in (with_it, without):
        tensors = {t.name: t for t in gguf.GGUFReader(path / "model.gguf").tensors}
        tensor = tensors["blk.0.ffn_down.weight"]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        errors.append(float((importance * (values - weight) ** 2).sum()))
    assert errors[0] < errors[1]


def test_types_that_need_an_imatrix_are_offered_and_refused_without_one(gguf_ctx):

    from edgerun.exporters.formats import all_formats

    assert "gguf-iq2_xxs" in all_formats()
    out, fields = _gguf_export(gguf_ctx, "gguf-iq2_xxs", "iq2")
    assert (out / "model.gguf").is_file() and fields["quant"]["imatrix"]["gguf_tensors"] > 0
    from edgerun.exporters.gguf import FAMILY

    for plain in (ExportOptions(imatrix=False), ExportOptions()):  # refused, or not asked for
        with pytest.raises(EdgerunError, match="needs an importance matrix for gguf-iq2_xxs"):
            FAMILY.check_options("gguf-iq2_xxs", plain)
