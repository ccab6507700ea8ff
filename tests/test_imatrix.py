"""Importance statistics: what the hooks measure, how they map to ONNX nodes and GGUF tensors,
and what llama.cpp's quantizer does with them and with per-tensor type overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edgerun.core.errors import EdgerunError  # noqa: E402
from edgerun.exporters.formats import ExportContext, ExportOptions, ReferenceModel  # noqa: E402
from edgerun.exporters.importance import IMPORTANCE_FILE, Importance, gather  # noqa: E402
from edgerun.sources.resolve import Checkpoint  # noqa: E402
from tests.tiny_models import build_tiny_model  # noqa: E402


def _context(ckpt: Path, root: Path, **options) -> ExportContext:
    scratch = root / "scratch"
    scratch.mkdir(parents=True)
    checkpoint = Checkpoint(path=ckpt, source=str(ckpt), kind="local")
    opts = ExportOptions(progress=False, **options)
    return ExportContext(checkpoint, ReferenceModel(ckpt), opts, scratch)


def _whole_model_statistics(model, windows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The statistic the old whole-model gatherer took: hooks on every Linear of the whole
    fp32 model, one forward per window, mean of x^2 per input column."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            flat = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + flat.square().sum(0)
            rows[name] = rows.get(name, 0) + flat.shape[0]

        return record

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    handles = [m.register_forward_hook(hook(n)) for n, m in linears]
    with torch.inference_mode():
        for ids in windows:
            model(input_ids=torch.from_numpy(ids[None, :]), use_cache=False)
    for handle in handles:
        handle.remove()
    return {n: (sums[n] / rows[n]).float().numpy() for n in sums}


@pytest.mark.parametrize("family", ["llama", "llama-untied"])
def test_the_streamed_gatherer_equals_the_whole_model_statistics(family, tmp_path):
    """One gatherer, layer by layer (the weights of one decoder layer in memory), measures what
    hooks on the whole fp32 model measure: every linear layer, windows of unequal length, the
    head run in slices of HEAD_ROWS tokens."""
    import torch

    from edgerun.exporters import importance
    from edgerun.exporters.stream import StreamedModel

    path = build_tiny_model(family, tmp_path / family)
    ref = ReferenceModel(path)
    ids = (np.arange(300, dtype=np.int64) * 7) % 300
    windows = [ids[:160], ids[160:]]  # 160 > HEAD_ROWS: the head runs in two slices
    assert importance.HEAD_ROWS < 160
    whole = _whole_model_statistics(ref.model, windows)
    seen = []
    with StreamedModel(path) as streamed:
        values, extras, tokens = importance.measure(
            streamed, windows, lambda name, w: seen.append(name) or w.shape
        )
    assert tokens == 300
    names = {n for n, m in ref.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(values) == set(whole) == names and "lm_head" in names
    for name in names:
        assert values[name] == pytest.approx(whole[name], rel=1e-4, abs=1e-7), name
    # on_weight ran once per layer, with its weight [out, in] loaded
    assert sorted(seen) == sorted(names)
    assert extras["model.layers.1.mlp.down_proj"] == (64, 128)


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

    with pytest.raises(EdgerunError, match="needs an importance matrix for gguf-iq2_xxs"):
        FAMILY.check_options("gguf-iq2_xxs", ExportOptions(imatrix=False))
    FAMILY.check_options("gguf-iq2_xxs", ExportOptions())  # the default gathers one


def test_gguf_target_kl_raises_the_most_sensitive_tensors_and_the_header_says_so(gguf_ctx):
    """--target-kl for GGUF: bisects on how many of the ranked tensors go to q8_0, the smallest
    count whose calibration KL is within the margin; the header holds exactly those types."""
    import dataclasses

    from edgerun.exporters.gguf.imatrix import written_types
    from edgerun.exporters.onnx.target import MARGIN

    def export_for(target: float, name: str) -> tuple[Path, dict]:
        opts = dataclasses.replace(gguf_ctx.options, target_kl=target)
        return _gguf_export(dataclasses.replace(gguf_ctx, options=opts), "gguf-q4_0", name)

    _, loose = export_for(9.0, "loose")  # met as quantized: nothing raised
    calib = loose["quant"]["recipe"]["calibration"]
    assert calib["tensors_raised"] == 0 and "tensor_types" not in loose["quant"]
    (all_raised,) = [p["kl"] for p in calib["probes"] if p["k"] == calib["tensors"]]
    (none,) = [p["kl"] for p in calib["probes"] if p["k"] == 0]
    assert all_raised < none
    target = (all_raised + none) / 2 / MARGIN
    out, fields = export_for(target, "target")
    recipe = fields["quant"]["recipe"]
    k = recipe["calibration"]["tensors_raised"]
    assert 0 < k < calib["tensors"] and len(recipe["raised"]) == k
    probes = {p["k"]: p["kl"] for p in recipe["calibration"]["probes"]}
    assert probes[k] <= target * MARGIN and all(
        kl > target * MARGIN for j, kl in probes.items() if j < k
    )
    types = written_types(out / "model.gguf")
    assert all(types[name] == "q8_0" for name in recipe["raised"])
    assert fields["quant"]["tensor_types"]["verified"] is True
    q4 = [n for n in types if n.startswith("blk.") and n.endswith(".weight") and types[n] == "q4_0"]
    assert len(q4) == calib["tensors"] - k  # every other ranked tensor keeps the file type
    with pytest.raises(EdgerunError, match="out of reach: with every tensor of gguf-q4_0 at q8_0"):
        export_for(all_raised / 10, "unreachable")
