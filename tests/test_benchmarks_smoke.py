"""benchmarks/: the table, ratio and roofline logic on fake rows, the README block, the prompt ids
and the weight-bytes estimate on a tiny GGUF-free ONNX graph. No model is run here."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks import render, report, weights
from benchmarks.workload import RowSpec, Workload, select


def rep(decode: float, ttft: float = 0.1, prompt: int = 128) -> dict[str, Any]:
    return {"ttft_s": ttft, "prefill_tok_s": prompt / ttft, "decode_tok_s": decode, "gen_tokens": 8}


def row(name: str, kind: str, fmt: str, decodes: list[float], **extra: Any) -> dict[str, Any]:
    base = {
        "name": name, "kind": kind, "fmt": fmt, "status": "ok", "reason": None,
        "size_bytes": 100_000_000, "touched_bytes": 50_000_000, "peak_rss_bytes": 300_000_000,
        "reps": {"128": [rep(d) for d in decodes]}, "tokens": {"128": [1, 2, 3, 4]}, "meta": {},
    }  # fmt: skip
    base.update(extra)
    return base


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return [
        row("llama.cpp q4_1 (source gguf)", "peer", "gguf q4_1", [90, 92, 91, 10, 95]),
        row("onnxruntime-genai int4", "peer", "genai int4", [80, 81, 82]),
        row("pytorch fp32", "peer", "safetensors fp32", [13, 13, 13], touched_bytes=None),
        row("edgerun onnx-int4", "edgerun", "onnx-int4", [100, 101, 99],
            tokens={"128": [1, 2, 9, 9]}, meta={"validation": {"passed": True}}),
        row("edgerun gguf-q4_k_m", "edgerun", "gguf-q4_k_m", [46, 45, 47],
            meta={"validation": {"passed": False}}),
        row("edgerun onnx-int4 (optimum builder)", "edgerun", "onnx-int4", [120, 121, 122],
            meta={"validation": {"passed": False}}),
        row("edgerun onnx-int8", "edgerun", "onnx-int8", [], status="skipped",
            reason="edgerun has no 'export' command"),
    ]  # fmt: skip


def test_summary_medians_ratios_and_roofline(rows: list[dict[str, Any]]) -> None:
    summary = {x["name"]: x for x in report.summarize(rows, bandwidth_gb_s=10.0)}
    assert "edgerun onnx-int8" not in summary  # skipped rows have no line
    llama = summary["llama.cpp q4_1 (source gguf)"]
    assert llama["decode_tok_s"] == 91  # the median, not the mean dragged down by the outlier
    assert llama["vs_best_peer"] == pytest.approx(1.0)
    assert summary["onnxruntime-genai int4"]["vs_best_peer"] == pytest.approx(81 / 91)
    ours = summary["edgerun onnx-int4"]
    assert ours["vs_best_peer"] == pytest.approx(100 / 91)
    assert ours["roofline_tok_s"] == pytest.approx(10e9 / 50e6)  # 200 tok/s
    assert ours["roofline_frac"] == pytest.approx(100 / 200)
    assert ours["agree"] == 2 and summary["pytorch fp32"]["agree"] == 4
    assert ours["valid"] is True and summary["edgerun gguf-q4_k_m"]["valid"] is False
    assert summary["pytorch fp32"]["roofline_frac"] is None  # unknown bytes: no roofline


def test_head_to_head_quotes_int4_q4km_and_best(rows: list[dict[str, Any]]) -> None:
    h2h = report.head_to_head(report.summarize(rows, 10.0))
    labels = [h["edgerun"] for h in h2h]
    # the faster optimum-builder row failed validation, so it is not the "best"
    assert labels == [
        "edgerun onnx-int4", "edgerun gguf-q4_k_m", "edgerun best (edgerun onnx-int4)",
    ]  # fmt: skip
    q4km = h2h[1]["vs"]
    assert q4km["llama.cpp q4_1 (source gguf)"] == pytest.approx(46 / 91)
    assert q4km["pytorch fp32"] == pytest.approx(46 / 13)


def test_targets_judge_the_median_of_paired_round_ratios() -> None:
    rows = [
        # round 2 was a slow spell for both: the paired ratio shrugs it off
        row("optimum fp32", "peer", "onnx fp32", [20.0, 10.0, 20.0, 21.0]),
        row("edgerun onnx-fp32", "edgerun", "onnx-fp32", [39.0, 20.0, 41.0, 30.0]),
        row("onnxruntime-genai int4", "peer", "genai int4", [100.0, 100.0, 100.0]),
        row("edgerun onnx-int4", "edgerun", "onnx-int4", [101.0, 99.0, 102.0]),
        row("llama.cpp gguf-q4_0", "peer", "gguf-q4_0", [100.0]),
        row("edgerun gguf-q4_0", "edgerun", "gguf-q4_0", [50.0], status="failed"),  # not judged
    ]
    got = {t["edgerun"]: t for t in report.targets(rows)}
    assert set(got) == {"edgerun onnx-fp32", "edgerun onnx-int4"}
    fp32 = got["edgerun onnx-fp32"]
    assert fp32["ratio"] == pytest.approx(statistics.median([39 / 20, 2.0, 41 / 20, 30 / 21]))
    assert fp32["ratio_of_medians"] == pytest.approx(statistics.median([39, 20, 41, 30]) / 20)
    assert fp32["met"] is False and fp32["goal"] == 2.0 and fp32["rounds"] == 4
    int4 = got["edgerun onnx-int4"]
    assert int4["ratio"] == pytest.approx(1.01) and int4["met"] is True
    assert render.target_line(int4) == (
        "prompt 128, edgerun onnx-int4 / onnxruntime-genai int4: 1.01x (rounds 0.99-1.02,"
        " ratio of medians 1.01x), target >= 1.00x: met"
    )


def test_same_file_overhead_pairs_edgerun_with_llama_on_one_gguf() -> None:
    rows = [
        row("llama.cpp gguf-q4_k_m", "peer", "gguf-q4_k_m", [100.0]),
        row("edgerun gguf-q4_k_m", "edgerun", "gguf-q4_k_m", [80.0]),
        row("edgerun onnx-int4", "edgerun", "onnx-int4", [90.0]),  # no same-file peer
    ]
    (pair,) = report.same_file(report.summarize(rows, None))
    assert pair["fmt"] == "gguf-q4_k_m"
    assert pair["overhead_ms_per_token"] == pytest.approx(12.5 - 10.0)
    assert render.same_file_line(pair) == (
        "prompt 128, gguf-q4_k_m: edgerun 12.50 ms/token, llama.cpp 10.00 ms/token: +2.50 ms/token"
    )


def test_markdown_block_and_readme_update(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    summary = report.summarize(rows, 10.0)
    results = {
        "command": "python -m benchmarks.peers", "created": "2026-11-23T20:00:00Z",
        "workload": Workload().to_json() | {"gen_tokens": 4}, "rows": rows, "summary": summary,
        "head_to_head": report.head_to_head(summary),
        "bandwidth": {"gb_s": 10.0, "copy_gb_s": 10.0, "triad_gb_s": 9.5, "method": "STREAM"},
        "machine": {"cpu": "Test CPU", "arch": "x86_64", "logical_cores": 2, "flags": ["avx2"],
                    "ram_bytes": 8 * 2**30, "kernel": "Linux 6", "python": "3.11",
                    "loadavg": [0.1, 0.1, 0.1], "libraries": {"onnxruntime": "1.32"}, "git": "abc"},
    }  # fmt: skip
    block = render.markdown(results)
    assert "Test CPU (x86_64), 2 logical cores, flags avx2, 8.0 GiB RAM" in block
    assert (
        "| edgerun onnx-int4 | onnx-int4 | 100.0 | 1280 | 100 | 300 | 100 | 1.10 | 50% | 2/4 | pass |"
        in block
    )
    assert "- edgerun onnx-int8: skipped: edgerun has no 'export' command" in block
    assert "prompt 128, edgerun gguf-q4_k_m: llama.cpp q4_1 (source gguf) 0.51x" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{render.START}\nold\n{render.END}\ntail\n")
    render.update_readme(readme, block)
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{render.END}\ntail\n") and block in text
    bare = tmp_path / "bare.md"
    bare.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        render.update_readme(bare, block)


def test_select_rows_by_name_or_kind() -> None:
    specs = [RowSpec("llama.cpp q4_1", "peer", "llama_cpp", "q4_1"),
             RowSpec("edgerun onnx-int4", "edgerun", "edgerun", "onnx-int4")]  # fmt: skip
    assert [s.name for s in select(specs, "edgerun")] == ["edgerun onnx-int4"]
    assert [s.name for s in select(specs, "LLAMA, nothing")] == ["llama.cpp q4_1"]
    assert select(specs, None) == specs


def test_prompt_ids_have_the_exact_length_and_are_stable(tiny_llama: Path) -> None:
    from benchmarks.workload import prompt_ids

    ids = prompt_ids(tiny_llama / "tokenizer.json", 512, seed=1)
    assert len(ids) == 512
    assert ids == prompt_ids(tiny_llama / "tokenizer.json", 512, seed=1)
    assert ids != prompt_ids(tiny_llama / "tokenizer.json", 512, seed=2)


def test_onnx_touched_bytes_skip_gather_only_tables(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    embed = numpy_helper.from_array(np.zeros((100, 8), np.float32), "embed")  # gathered only
    tied = numpy_helper.from_array(np.zeros((50, 8), np.float32), "tied")  # gathered and matmul
    proj = numpy_helper.from_array(np.zeros((8, 8), np.float32), "proj")
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["h0"]),
        helper.make_node("Gather", ["tied", "ids"], ["h1"]),
        helper.make_node("MatMul", ["h0", "proj"], ["h2"]),
        helper.make_node("MatMul", ["h2", "tiedT"], ["out"]),
        helper.make_node("Transpose", ["tied"], ["tiedT"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        initializer=[embed, tied, proj],
    )  # fmt: skip
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert weights.touched_bytes(tmp_path) == (50 * 8 + 8 * 8) * 4
    assert weights.artifact_bytes(tmp_path) == path.stat().st_size


def test_quick_run_end_to_end_on_a_tiny_model(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole orchestration for real (row process, protocol, JSON), on the PyTorch row of a
    tiny checkpoint; rows without artifacts must be listed as skipped with their reason."""
    import json

    from click.testing import CliRunner

    from benchmarks.peers import main

    monkeypatch.setenv("EDGERUN_BENCH_WORK", str(tmp_path / "work"))
    monkeypatch.setattr("edgerun.bench.bandwidth.default_array_mib", lambda: 16)  # keep it quick
    out = tmp_path / "r.json"
    args = ["--quick", "--no-build", "--no-readme", "--only", "pytorch,edgerun onnx-int4,source"]
    result = CliRunner().invoke(main, [*args, "--model", str(tiny_llama), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {
        "llama.cpp q4_1 (source gguf)", "pytorch fp32", "edgerun onnx-int4",
        "edgerun onnx-int4 (optimum builder)",
    }  # fmt: skip
    torch_row = rows["pytorch fp32"]
    assert torch_row["status"] == "ok", torch_row["reason"]
    (measured,) = torch_row["reps"]["32"]
    assert measured["gen_tokens"] == 16 and measured["decode_tok_s"] > 0 and measured["ttft_s"] > 0
    assert torch_row["peak_rss_bytes"] > torch_row["touched_bytes"] > 0
    assert len(torch_row["tokens"]["32"]) == 16
    assert "not pulled from a GGUF" in rows["llama.cpp q4_1 (source gguf)"]["reason"]
    assert "not built yet" in rows["edgerun onnx-int4"]["reason"]
    (line,) = data["summary"]
    assert line["name"] == "pytorch fp32" and line["vs_best_peer"] == 1.0 and line["agree"] == 16
    assert data["bandwidth"]["gb_s"] > 0 and data["machine"]["logical_cores"] >= 1
    assert "skipped: edgerun onnx-int4: " in result.output


def test_export_cost_pipeline_measures_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from benchmarks.export_cost import Pipeline, markdown, run_pipeline

    monkeypatch.setenv("EDGERUN_BENCH_WORK", str(tmp_path / "work"))
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_bytes(b'w' * 1000)"
    hold = "import time; b = b'x' * 300_000_000; time.sleep(0.5)"  # 300 MB, held for the poller
    ok = Pipeline("fake", [[sys.executable, "-c", write, "{out}/model.gguf"],
                           [sys.executable, "-c", hold]])  # fmt: skip
    result = run_pipeline(ok, tmp_path / "work" / "p0")
    assert result["status"] == "ok" and result["output_bytes"] == 1000
    small, big = result["steps"]
    assert big["peak_rss_bytes"] > 300e6 > small["peak_rss_bytes"]
    assert result["peak_rss_bytes"] == big["peak_rss_bytes"]
    assert result["wall_s"] == pytest.approx(small["wall_s"] + big["wall_s"])
    assert not (tmp_path / "work" / "p0").exists()  # outputs are deleted once measured
    boom = "import sys; print('working'); print('error: boom'); sys.exit(3)"
    bad = run_pipeline(Pipeline("bad", [[sys.executable, "-c", boom]]), tmp_path / "w" / "p1")
    assert bad["status"] == "failed" and bad["reason"] == "error: boom"
    rows = [{"name": "fake", "status": "ok", "runs": [result], **{k: result[k] for k in (
        "wall_s", "peak_rss_bytes", "output_bytes")}},
        {"name": "bad", "status": "failed", "reason": "error: boom", "runs": [bad]}]  # fmt: skip
    machine = {"cpu": "Test CPU", "logical_cores": 2, "loadavg": [0.5, 0, 0]}
    text = markdown({"created": "now", "machine": machine, "model": "m", "reps": 1, "rows": rows})
    assert f"| fake | {result['wall_s']:.0f} | {big['peak_rss_bytes'] / 1e6:.0f} | 0 |" in text
    assert "| bad | failed: error: boom | | | |" in text


def test_scale_fits_a_line_and_holds_rss_against_the_runtime_context(tmp_path: Path) -> None:
    import json

    from benchmarks.scale import bench_row, kv_bytes, linear_fits

    rows = [(0.5, 100.0), (1.0, 200.0), (2.0, 400.0), (4.0, 805.0)]
    results: dict[str, Any] = {
        "shapes": [
            {"parameters": int(p * 1e9), "exports": [{"format": "f", "wall_s": w}], "peer": None,
             "tokenizer": "t"}
            for p, w in rows
        ]
    }  # fmt: skip
    fit = linear_fits(results)["f"]
    assert fit["s_per_billion"] == pytest.approx(201.4, abs=0.5) and fit["r2"] > 0.999
    assert fit["one_tokenizer"] is True
    results["shapes"][1]["tokenizer"] = "other"  # a shape that tokenizes into other counts
    assert linear_fits(results)["f"]["one_tokenizer"] is False
    results["shapes"][3]["exports"][0]["wall_s"] = 4000.0  # superlinear: the fit says so
    assert linear_fits(results)["f"]["r2"] < 0.9

    config = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
              "num_hidden_layers": 32}  # fmt: skip
    summary = {"peak_rss": {"median": 7.36e9}, "decode_tok_s": {"median": 1.8},
               "anonymous": {"median": 6.9e9}, "file_backed": {"median": 0.4e9}}  # fmt: skip
    art = {"context_length": 131072, "size_bytes": int(5.22e9),
           "runtime_info": {"context_length": 4096}, "summary": {"by_prompt": {"64": summary}}}  # fmt: skip
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"runs": [{"artifacts": [art]}]}))
    row = bench_row(bench, config)
    # the trained context's KV (17 GB) would let any RSS pass; the runtime's 4096 does not
    assert row["context"] == 4096 and row["kv_bytes"] == kv_bytes(config, 4096)
    assert row["within_budget"] is False and row["anonymous_bytes"] == 6.9e9


def test_capped_sizes_parse_and_refuse_junk() -> None:
    import click

    from benchmarks.capped import parse_size

    assert parse_size("8G") == 8 << 30 and parse_size("7500M") == 7500 << 20
    assert parse_size("512MiB") == 512 << 20 and parse_size("1000") == 1000
    with pytest.raises(click.BadParameter, match="not a size"):
        parse_size("eight")


@pytest.mark.parametrize("elem, want", [(1, 4), (10, 2)])
def test_scale_counts_the_kv_cache_in_the_graphs_own_type(
    tmp_path: Path, elem: int, want: int
) -> None:
    """onnxruntime-genai's CPU int4 graphs keep an fp32 KV cache: counted as fp16, the rule
    under-stated an ONNX artifact's KV by half; a GGUF's (llama.cpp's f16) is 2 bytes."""
    import onnx
    from onnx import helper

    from benchmarks.scale import kv_dtype_bytes

    past = helper.make_tensor_value_info("past_key_values.0.key", elem, [1, 2, "n", 8])
    out = helper.make_tensor_value_info("present.0.key", elem, [1, 2, "n", 8])
    graph = helper.make_graph(
        [helper.make_node("Identity", [past.name], [out.name])], "g", [past], [out]
    )
    (tmp_path / "onnx").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "onnx" / "model.onnx"))
    assert kv_dtype_bytes(tmp_path / "onnx") == want
    assert kv_dtype_bytes(tmp_path) == 2  # no graph: a GGUF directory


def test_capped_evicts_every_file_it_is_given(tmp_path: Path) -> None:
    from benchmarks.capped import evict

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 5000)
    (tmp_path / "d" / "e" / "b.bin").write_bytes(b"y" * 3000)
    (tmp_path / "c.gguf").write_bytes(b"z" * 100)
    assert evict([tmp_path / "d", tmp_path / "c.gguf"]) == 8100
    assert evict([]) == 0


def test_the_tune_study_pools_the_sweep_by_distinct_computation(tmp_path: Path) -> None:
    """Two nominal configurations that run alike (a quantized KV cache turns flash attention
    on) are one computation: their reps are pooled before the best is picked, so the luckier
    draw is not crowned (session 14 read one computation at 112.4 and 140.6 tok/s)."""
    from benchmarks.tune_study import computations
    from edgerun.tune.space import Space, build_arm
    from edgerun.tune.topology import Topology

    topology = Topology(cpus=[0, 1], clusters=[[0, 1]], one_per_core=[0, 1])
    arm = build_arm(tmp_path / "gguf", "gguf-q4_k_m", "llamacpp", topology, 2)
    q8 = {**arm.default(), "kv_cache": "q8_0"}
    rows = [
        {"arm": arm.name, "config": arm.default(), "values": [127.0, 128.0, 129.0]},
        {"arm": arm.name, "config": q8, "values": [110.0, 112.4, 114.0]},
        {"arm": arm.name, "config": {**q8, "flash_attn": True}, "values": [139.0, 140.6, 141.0]},
        {"arm": arm.name, "config": {**arm.default(), "threads": 1}, "values": []},  # all busy
    ]
    pooled = computations(rows, Space([arm], topology))
    assert len(pooled) == 2
    (flash_q8,) = [g for g in pooled if g["config"]["kv_cache"] == "q8_0"]
    assert flash_q8["config"]["flash_attn"] and len(flash_q8["nominal"]) == 2
    assert flash_q8["decode"]["median"] == pytest.approx((114.0 + 139.0) / 2)
    assert max(pooled, key=lambda g: g["decode"]["median"])["config"] == arm.default()
