"""What a terminal shows. `lab devices` and `export`'s closing table at widths from 60 to 200: every
line fits, every number and version shown is whole, and what did not fit is named (the same
rule as bench's and compare's tables, tests/test_compare.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from edgerun.bench.render import LABEL_WIDTH, fit_columns
from edgerun.bench.results import cell
from edgerun.exporters.report import COLUMNS as EXPORT_COLUMNS
from edgerun.exporters.report import LABELS as EXPORT_LABELS
from edgerun.exporters.report import print_results, result_rows
from edgerun.lab.render import DEVICE_COLUMNS, DEVICE_LABELS, device_rows, print_devices

WIDTHS = [60, 80, 120, 200]

DEVICES: list[dict[str, Any]] = [
    {
        "id": "lab-host",
        "profile": "x86-avx2",
        "cpu": "AMD EPYC 7B13 64-Core Processor",
        "arch": "x86_64",
        "cores": 2,
        "ram_bytes": 24 * 2**30,
        "os": "Linux 6.1.0-28-cloud-amd64",
        "accelerators": [],
        "libraries": {
            "edgerun": "0.1.0.dev214+g3f2a9c1",
            "onnxruntime": "1.23.2",
            "llama-cpp-python": "0.3.36",
        },
    },
    {
        "id": "raspberry-pi-5-kitchen",
        "profile": "rpi5",
        "cpu": "Cortex-A76",
        "arch": "aarch64",
        "cores": 4,
        "ram_bytes": 8 * 2**30,
        "os": "Linux 6.6.51+rpt-rpi-2712",
        "accelerators": ["hailo-8l"],
        "libraries": {"edgerun": "0.1.0", "onnxruntime": "1.22.0", "llama-cpp-python": None},
    },
    {"id": "orin", "error": "did not answer within 30 s"},
]


def _export_results() -> list[Any]:
    def result(fmt: str, passed: bool | None, **manifest: Any) -> Any:
        return SimpleNamespace(
            format=fmt,
            status={True: "pass", False: "FAIL, forced", None: "not validated"}[passed],
            size_bytes=123_456_789,
            wall_s=1234.5,
            validation={"ppl_ratio": 1.0312, "mean_kl": 0.14812} if passed is not None else None,
            manifest=manifest,
        )

    return [
        result(
            "onnx-int4", True, size={"bits_per_weight": 4.884}, probe={"decode_ms_per_token": 11.27}
        ),
        result("gguf-q4_k_m", False, size={"bits_per_weight": 5.021}),
        result("onnx-fp32", None),
    ]


def check_table(
    rows: list[dict[str, Any]], columns: list, labels: tuple, lines: list[str], width: int
) -> list:
    """Every line fits `width`; each body row's words are its shown cells' words (a label may be
    cut at LABEL_WIDTH with …, nothing else); the columns left out are named. Returns those shown."""
    shown, hidden = fit_columns(rows, columns, width, labels)
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    body = lines[rule + 1 : rule + 1 + len(rows)]
    assert all(len(line) <= width for line in lines[: rule + 1 + len(rows)]), lines
    for row, line in zip(rows, body, strict=True):
        cells = []
        for key, _ in shown:
            text = cell(row, key)
            if key in labels and len(text) > LABEL_WIDTH:
                text = text[: LABEL_WIDTH - 1] + "…"
            else:
                assert "…" not in text
            cells.append(text)
        assert line.split() == " ".join(cells).split(), (line, cells)
    if hidden:
        named = " ".join(" ".join(lines).split())  # the note may wrap
        assert f"not shown at {width} columns: {', '.join(hidden)} (" in named
    return shown


@pytest.mark.parametrize("width", WIDTHS)
def test_lab_devices_fit_and_versions_are_whole(width: int) -> None:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, record=True)
    print_devices(DEVICES, [], console=console)
    lines = console.export_text().splitlines()
    rows = device_rows(DEVICES)
    shown = check_table(rows, DEVICE_COLUMNS, DEVICE_LABELS, lines, width)
    if width >= 80:  # the skew a lab is read for: every library version, whole
        assert [k for k, _ in shown[:4]] == ["device", "edgerun", "onnxruntime", "llama-cpp"]
        assert any("0.1.0.dev214+g3f2a9c1" in line for line in lines)
    assert any(line == "orin: did not answer within 30 s" for line in lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_export_table_fits_and_numbers_are_whole(width: int) -> None:
    results = _export_results()
    console = Console(file=io.StringIO(), width=width, force_terminal=True, record=True)
    print_results(results, console=console)
    lines = console.export_text().splitlines()
    shown = check_table(result_rows(results), EXPORT_COLUMNS, EXPORT_LABELS, lines, width)
    if width >= 80:
        assert shown == EXPORT_COLUMNS  # all eight fit an 80-column terminal
        text = "\n".join(lines)
        for number in ("117.7 MiB", "4.88", "1.031", "0.1481", "11.27", "1234 s"):
            assert number in text


def test_piped_tables_are_as_wide_as_they_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal without COLUMNS every column is shown (a log keeps everything)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    console = Console(file=io.StringIO(), width=80, force_terminal=False, record=True)
    print_devices(DEVICES, [], console=console)
    text = console.export_text()
    assert "not shown" not in text and "AMD EPYC 7B13 64-Core Proce…" in text


def test_export_stage_shows_count_elapsed_and_eta() -> None:
    """A long export stage's live line: its detail, the count in it, the time elapsed and the
    time remaining; then one closing line."""
    import time

    from edgerun.core.progress import stage_printer

    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with stage_printer(console)("calibrate (per-layer sensitivity)") as detail:
        for i in range(1, 5):
            detail(f"window {i}/4")
            time.sleep(0.15)  # the live display refreshes 10 times a second
    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # colours, cursor moves
    assert "calibrate (per-layer sensitivity): window 4/4" in raw
    assert "3/4" in raw and "0:00:00" in raw and "ETA" in raw
    assert re.search(r"✓ calibrate \(per-layer sensitivity\) \(0\.\d s\)\n$", raw)


def test_llama_cpp_warnings_stay_out_of_the_output(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's warnings (ggml level 3) go to the debug log, not stderr, while its logger is
    quiet; its errors (level 4) still reach stderr; a continuation (5) follows its line."""
    import logging

    from edgerun.backends.llama_log import route

    quiet = logging.getLogger("llama-cpp-python")
    saved = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.DEBUG, logger="edgerun.llama_cpp"):
            route(3, b"llama_context: n_ctx_seq (512) < n_ctx_train (8192)\n")
            route(5, b"... the full capacity of the model will not be utilized\n")
            route(4, b"llama_model_load: error loading model\n")
            route(5, b" tensor data is not within the file bounds\n")
    finally:
        quiet.setLevel(saved)
    err = capsys.readouterr().err
    assert (
        err == "llama_model_load: error loading model\n tensor data is not within the file bounds\n"
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "edgerun.llama_cpp"]
    assert logged == [
        "llama_context: n_ctx_seq (512) < n_ctx_train (8192)",
        "... the full capacity of the model will not be utilized",
    ]


def test_gguf_quantize_shows_its_tensor_count(tiny_llama: Path, tmp_path: Path) -> None:
    """llama.cpp's quantize stage counts the tensors as llama.cpp starts each one (read from
    its log, which stays captured): `llama.cpp quantize q4_0: tensor 12/12` on the live line."""
    pytest.importorskip("llama_cpp")
    gguf = pytest.importorskip("gguf")
    from edgerun.core.progress import stage_printer
    from edgerun.exporters.gguf import converter
    from edgerun.exporters.gguf.convert import convert
    from edgerun.exporters.gguf.quantize import quantize

    source = tmp_path / "f16.gguf"
    convert(converter.ensure(), tiny_llama, source, "f16", show=lambda detail: None)
    total = len(gguf.GGUFReader(source).tensors)
    seen: list[str] = []
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    with stage_printer(console)("llama.cpp quantize q4_0") as detail:

        def show(text: str) -> None:
            seen.append(text)
            detail(text)

        quantize(source, tmp_path / "q4_0.gguf", "q4_0", 1, progress=show)
    assert seen == [f"tensor {i}/{total}" for i in range(1, total + 1)]
    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert f"llama.cpp quantize q4_0: tensor {total}/{total}" in raw
    assert "type =" not in raw and "converting to" not in raw  # llama.cpp's own lines stay out
    assert (tmp_path / "q4_0.gguf").is_file()


def test_onnx_quantize_counts_the_weights_over_every_pass() -> None:
    """The fp32-graph quantize stage shows `MatMul n/N` as onnxruntime's quantizer takes each
    constant weight: once each over the 8-bit pass of a mixed plan and the 4-bit pass; a MatMul
    of two activations is no weight and not counted."""
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgerun.exporters.onnx.quant import WeightOnlyConfig, quantize_weight_only

    rng = np.random.default_rng(0)
    names = ["/model/layers.0/mlp/up_proj/MatMul", "/model/layers.0/mlp/down_proj/MatMul"]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name=names[0]),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"], name=names[1]),
        helper.make_node("MatMul", ["h1", "h1t"], ["scores"], name="/attn/MatMul"),
        helper.make_node("Transpose", ["h1"], ["h1t"], name="/t"),
        helper.make_node("MatMul", ["h1", "w2"], ["logits"], name="/lm_head/MatMul"),
    ]
    weights = [numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), "w0")]
    weights += [numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), "w1")]
    weights += [numpy_helper.from_array(rng.normal(size=(64, 96)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [nodes[0], nodes[1], nodes[3], nodes[2], nodes[4]],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 96]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1]),
        ],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    seen: list[str] = []
    plan = {names[0]: 4, names[1]: 8, "/lm_head/MatMul": 4}
    _, quant = quantize_weight_only(model, WeightOnlyConfig(), plan, seen.append)
    assert quant["nodes"] == plan
    assert seen == ["MatMul 1/3", "MatMul 2/3", "MatMul 3/3"]


def test_bench_and_compare_commands_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edgerun bench` and `edgerun compare` themselves, as an 80-column terminal's pipe runs
    them (COLUMNS=80): every table line fits, each body row shows exactly its cells of the
    results file, whole, and the columns left out are named."""
    from click.testing import CliRunner

    from edgerun.bench.compare import TERMINAL_COLUMNS, add_ratios, load
    from edgerun.bench.render import LABELS, TERMINAL
    from edgerun.bench.results import read_results, rows
    from edgerun.cli import cli
    from tests.bench_fake import make_artifact

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    arts = [
        make_artifact(tmp_path / "a", "onnx-int4-recipe-mixed-long-name"),
        make_artifact(tmp_path / "b", "gguf-q4_k_m", decode_s=0.006),
    ]
    args = ["bench", *map(str, arts), "--loader", "tests.bench_fake:load", "--idle-seconds", "0"]
    args += ["--reps", "2", "--warmup", "0", "--gen-tokens", "5", "--prompt-tokens", "8,16"]
    results = tmp_path / "r.json"
    bench = CliRunner().invoke(cli, [*args, "--assume-watts", "10", "--json", str(results)])
    assert bench.exit_code == 0, bench.output
    table = rows(read_results(results))
    shown = check_table(table, TERMINAL, LABELS, bench.output.splitlines(), 80)
    assert ("decode_tok_s", "decode tok/s") in shown

    compare = CliRunner().invoke(cli, ["compare", str(results)])
    assert compare.exit_code == 0, compare.output
    joined, _ = load([results])
    add_ratios(joined, joined[0])
    shown = check_table(joined, TERMINAL_COLUMNS, LABELS, compare.output.splitlines(), 80)
    assert ("decode_ratio", "decode ×") in shown
