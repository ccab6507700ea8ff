"""`edgerun compare` on two result files, one hand-edited to come from another device."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.bench.compare import load, pick_baseline
from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from tests.bench_fake import make_artifact

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """r1.json from a real (fake-runtime) bench run; r2.json: the same, edited to be a Jetson
    at half the decode speed, twice the J/token and another profile."""
    tmp = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(ROOT))
    mp.setenv("EDGERUN_HOME", str(tmp / "home"))
    try:
        arts = [
            make_artifact(tmp / "a", "fake-a"),
            make_artifact(tmp / "b", "fake-b", decode_s=0.006),
        ]
        r1 = tmp / "r1.json"
        result = CliRunner().invoke(
            cli,
            [
                "bench",
                *map(str, arts),
                "--loader",
                "tests.bench_fake:load",
                "--idle-seconds",
                "0",
                "--reps",
                "2",
                "--warmup",
                "0",
                "--gen-tokens",
                "5",
                "--prompt-tokens",
                "8,16",
                "--assume-watts",
                "10",
                "--json",
                str(r1),
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        mp.undo()
    data = json.loads(r1.read_text())
    run = data["runs"][0]
    run["device"]["name"] = "jetson-orin-nano"
    run["device"]["profile"]["id"] = "jetson-orin"
    for art in run["artifacts"]:
        art["profile_id"] = "jetson-orin"
        for s in art["summary"]["by_prompt"].values():
            s["decode_tok_s"]["median"] *= 0.5
            s["decode_j_per_token"]["median"] *= 2
    r2 = tmp / "r2.json"
    r2.write_text(json.dumps(data))
    return r1, r2


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["compare", *args])
    return result.exit_code, result.output


def test_join_and_ratios(results: tuple[Path, Path]) -> None:
    table, runs = load(list(results))
    assert len(runs) == 2 and len(table) == 8  # 2 devices x 2 artifacts x 2 prompt lengths
    base = pick_baseline(table, "orin-nano/jetson-orin/fake-a")
    from edgerun.bench.compare import add_ratios

    add_ratios(table, base)
    for row in table:
        twin = next(
            r
            for r in table
            if r["device"] == "jetson-orin-nano"
            and r["artifact"] == row["artifact"]
            and r["prompt_tokens"] == row["prompt_tokens"]
        )
        if row["device"] != "jetson-orin-nano":
            assert row["decode_tok_s"] == pytest.approx(2 * twin["decode_tok_s"])
        if row["artifact"] == "fake-a":
            expected = 1.0 if row["device"] == "jetson-orin-nano" else 2.0
            assert row["decode_ratio"] == pytest.approx(expected)
            assert row["energy_ratio"] == pytest.approx(1 / expected)
    assert [r["row"] for r in table] == list(range(1, 9))
    assert table[0]["device"] == "jetson-orin-nano"  # sorted by device, then artifact


def test_cli_compare_writes_md_csv_html_and_plot(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    md, csv_path, html, png = (tmp_path / n for n in ("c.md", "c.csv", "c.html", "c.png"))
    code, out = _run(
        *map(str, results),
        "--baseline",
        "orin-nano/jetson-orin/fake-a",
        "--md",
        str(md),
        "--csv",
        str(csv_path),
        "--html",
        str(html),
        "--plot",
        str(png),
    )
    assert code == 0, out
    assert "edgerun compare (baseline: row 1, jetson-orin-nano/jetson-orin/fake-a/fake)" in out
    assert "energy: ESTIMATE, assumed 10 W (--assume-watts): not measured" in out

    lines = md.read_text().splitlines()
    assert lines[0].startswith(
        "| # | device | profile | artifact | backend | prompt | decode tok/s |"
    )
    assert len(lines) == 2 + 8
    assert lines[2].startswith("| 1 | jetson-orin-nano | jetson-orin | fake-a | fake | 8 |")
    assert lines[2].endswith("| 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |")

    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 8
    other = [r for r in rows if r["device"] != "jetson-orin-nano" and r["artifact"] == "fake-a"]
    assert [float(r["decode_ratio"]) for r in other] == pytest.approx([2.0, 2.0])
    assert {r["ppl_ratio"] for r in rows} == {"1.05"}

    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 1
    assert "jetson-orin-nano" in page and '<tr class="main base">' in page
    assert "<script" not in page and "src=" not in page and "<link" not in page  # self-contained
    assert "decode tok/s" in page and "tok/s versus size" in page
    pytest.importorskip("matplotlib")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_refuses_other_schema_versions_and_non_results(
    results: tuple[Path, Path], tmp_path: Path
) -> None:
    data = json.loads(results[0].read_text())
    data["schema_version"] = 2
    future = tmp_path / "future.json"
    future.write_text(json.dumps(data))
    code, out = _run(str(future))
    assert code == 2
    assert out == (
        f"error: {future} is a bench result of schema version 2; this edgerun reads version 1 "
        "(re-run `edgerun bench` with this edgerun, or use the edgerun version that wrote it)\n"
    )
    manifest = tmp_path / "edgerun.json"
    manifest.write_text('{"schema_version": 1, "format": "onnx-int4"}')
    code, out = _run(str(manifest))
    assert out == (
        f'error: {manifest} is not an edgerun bench result (no "schema": "edgerun-bench") '
        "(pass a file written by `edgerun bench --json`)\n"
    )


def test_bad_baseline(results: tuple[Path, Path]) -> None:
    table, _ = load(list(results))
    with pytest.raises(EdgerunError, match="--baseline 99 is not a row"):
        pick_baseline(table, "99")
    with pytest.raises(EdgerunError, match="--baseline 'fake' matches 4 row groups"):
        pick_baseline(table, "fake")
    with pytest.raises(EdgerunError, match="--baseline 'nowhere' matches no row"):
        pick_baseline(table, "nowhere")


def _rendered(rows: list[dict], columns: list, width: int) -> tuple[list[str], list]:
    """print_rows at `width` terminal columns: (its lines, the columns it showed)."""
    from rich.console import Console

    from edgerun.bench.render import fit_columns, print_rows

    console = Console(file=io.StringIO(), width=width, force_terminal=True, record=True)
    print_rows(rows, [], "t", console=console, columns=columns)
    return console.export_text().splitlines(), fit_columns(rows, columns, width)[0]


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_terminal_tables_never_cut_a_number(results: tuple[Path, Path], width: int) -> None:
    """bench's and compare's tables at any terminal width: every line fits, every shown cell is
    whole (a row's words are exactly its cells' words), and what did not fit is named."""
    from edgerun.bench.compare import TERMINAL_COLUMNS, add_ratios
    from edgerun.bench.render import TERMINAL
    from edgerun.bench.results import cell

    table, _ = load(list(results))
    add_ratios(table, table[0])
    for columns in (TERMINAL, TERMINAL_COLUMNS):
        lines, shown = _rendered(table, columns, width)
        rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
        body = lines[rule + 1 : rule + 1 + len(table)]
        assert all(len(line) <= width for line in lines[: rule + 1 + len(table)])
        assert "…" not in "".join(lines)
        for row, line in zip(table, body, strict=True):
            assert line.split() == " ".join(cell(row, k) for k, _ in shown).split()
        left_out = [h for k, h in columns if (k, h) not in shown]
        if left_out:
            assert any(f"not shown at {width} columns: " in line for line in lines)
        assert width < 80 or ("decode_tok_s", "decode tok/s") in shown


def test_spread_beside_medians_and_overlapping_ratios_marked(results: tuple[Path, Path]) -> None:
    """A median carries its stdev over the reps; a ratio whose two min-max ranges overlap is
    marked ≈ (it may be noise); a run whose reps ranged widely gets an 'unsteady' line."""
    from edgerun.bench.compare import add_ratios
    from edgerun.bench.results import cell, unsteady

    table, _ = load(list(results))
    row = dict(table[0])
    assert cell(row, "decode_tok_s").split(" ±")[0] == f"{row['decode_tok_s']:.1f}"
    assert cell(row, "decode_tok_s").split(" ±")[1] != ""
    assert row["decode_tok_s_n"] == 2
    base = {**row, "decode_tok_s_min": 10.0, "decode_tok_s_max": 20.0}
    near = {**row, "decode_tok_s_min": 18.0, "decode_tok_s_max": 30.0}
    far = {**row, "decode_tok_s_min": 21.0, "decode_tok_s_max": 30.0}
    add_ratios(rows := [base, near, far], base)
    assert [r["decode_ratio_overlap"] for r in rows] == [False, True, False]
    assert cell(near, "decode_ratio").startswith("≈") and not cell(far, "decode_ratio").startswith(
        "≈"
    )
    shaky = {**row, "decode_tok_s": 5.04, "decode_tok_s_min": 4.3, "decode_tok_s_max": 23.7}
    steady = {**row, "decode_tok_s": 5.04, "decode_tok_s_min": 4.9, "decode_tok_s_max": 5.2}
    steady.update(ttft_ms_min=1.0, ttft_ms_max=1.0)
    shaky.update(ttft_ms_min=1.0, ttft_ms_max=1.0)
    assert unsteady([steady]) == []
    assert unsteady([shaky]) == [
        f"unsteady: {row['device']}/{row['artifact']} prompt {row['prompt_tokens']}: "
        "decode tok/s 4.300–23.7 around 5.040 over 2 reps"
    ]


def test_report_a_lab_would_publish(results: tuple[Path, Path], tmp_path: Path) -> None:
    """The HTML names each device's library versions and, for a lab run, what was shipped and
    how each pair ended; shows each artifact across devices; charts fidelity against speed; the
    PNG carries a title with the devices and the date."""
    pytest.importorskip("matplotlib")
    from edgerun.bench.compare import add_ratios
    from edgerun.bench.report import figure, to_html

    table, runs = load(list(results))
    add_ratios(table, table[0])
    runs[1] = {**runs[1], "lab": {"shipped": {"fake-a": 3 * 2**20, "fake-b": 0}}}
    runs[1]["artifacts"] = [
        {**runs[1]["artifacts"][0], "lab": {"status": "ok", "reason": None}},
        {**runs[1]["artifacts"][1], "lab": {"status": "failed", "reason": "out of memory"}},
    ]
    page = to_html(table, runs, table[0])
    edgerun_version = runs[0]["libraries"]["edgerun"]
    assert f"versions: edgerun {edgerun_version}, onnxruntime " in page
    assert "<li>fake-a: shipped 3.0 MiB, ok</li>" in page
    assert "<li>fake-b: already there, failed: out of memory</li>" in page
    assert "<h2>One artifact across devices</h2>" in page and "<h3>fake-a " in page
    assert "tok/s versus fidelity" in page and "× fastest" in page
    day = runs[0]["created"][:10]
    names = [str(r["device"]["name"]) for r in runs]
    assert f"<h1>edgerun comparison: {names[0]}, {names[1]} · {day}" in page
    fig = figure(table, runs)
    assert fig._suptitle.get_text().startswith("edgerun comparison: ")
    assert day in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes][2:4] == [
        "tok/s versus size",
        "tok/s versus fidelity",
    ]
