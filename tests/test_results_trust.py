"""Bench results from other labs are untrusted: escaped in the HTML report, checked on load."""

from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from edgerun.bench.compare import add_ratios, load, pick_baseline
from edgerun.bench.render import print_rows
from edgerun.bench.report import to_html
from edgerun.bench.results import read_results, to_csv, to_markdown
from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from tests.fuzz import FUZZ, hypothesis

st = hypothesis.strategies
SAMPLE = json.loads((Path(__file__).parent / "data" / "bench" / "sample-results.json").read_text())
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&[/bold][link=x]$\\x$--><!--"


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _hostile_file(tmp_path: Path) -> Path:
    """The sample with every string value (bar the schema name) replaced by HOSTILE."""
    data = copy.deepcopy(SAMPLE)
    for path in _leaves(data):
        if path and path != ("schema",) and isinstance(_get(data, path), str):
            _set(data, path, HOSTILE)
    out = tmp_path / "hostile.json"
    out.write_text(json.dumps(data))
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def test_hostile_strings_are_escaped_everywhere(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    page_path, md = tmp_path / "r.html", tmp_path / "r.md"
    args = ["compare", str(_hostile_file(tmp_path)), "--html", str(page_path), "--md", str(md)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    assert "<script" not in page and "<img" not in page and "<link" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # rendered, as text
    assert page.count("&lt;script&gt;") >= 10  # devices, run, table labels, energy notes
    assert "[/bold][link=x]" in result.output  # the terminal table shows it as text


@pytest.mark.parametrize(
    "path",
    [
        ("runs", 0, "workload", "reps"),
        ("runs", 0, "workload", "gen_tokens"),
        ("runs", 0, "workload", "prompt_tokens", 0),
        ("runs", 0, "device", "physical_cores"),
        ("runs", 0, "device", "ram_bytes"),
        ("runs", 0, "artifacts", 0, "threads"),
        ("runs", 0, "artifacts", 0, "size_bytes"),
        ("runs", 0, "artifacts", 0, "validation", "ppl_ratio"),
        ("runs", 0, "power", "idle_watts"),
        ("runs", 0, "artifacts", 0, "summary", "by_prompt", "8", "decode_tok_s", "median"),
    ],
)
def test_markup_in_a_number_field_is_refused(tmp_path: Path, path: tuple[Any, ...]) -> None:
    data = copy.deepcopy(SAMPLE)
    _set(data, path, HOSTILE)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    page = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["compare", str(bad), "--html", str(page)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {bad}: runs[0].") and "must be" in result.output
    assert result.output.count("\n") == 1 and not page.exists()


WRONG = {
    "runs missing": (("runs",), None, "the file lacks 'runs'"),
    "runs a dict": (("runs",), {}, "runs must be an array, not object {}"),
    "run a number": (("runs", 0), 3, "runs[0] must be an object, not number 3"),
    "artifacts null": (("runs", 0, "artifacts"), None, "runs[0].artifacts must be an array"),
    "name missing": (
        ("runs", 0, "artifacts", 0, "name"),
        None,
        "runs[0].artifacts[0] lacks 'name'",
    ),
    "prompt key not a number": (
        ("runs", 0, "artifacts", 0, "summary", "by_prompt"),
        {"eight": {}},
        "runs[0].artifacts[0].summary.by_prompt.eight is not a prompt length",
    ),
    "median missing": (
        ("runs", 0, "artifacts", 0, "summary", "by_prompt", "8", "ttft_s"),
        {"stdev": 1.0},
        "by_prompt.8.ttft_s lacks 'median'",
    ),
    "median infinite": (
        ("runs", 0, "artifacts", 0, "summary", "load_s", "median"),
        float("inf"),
        "load_s.median must be a finite number",
    ),
    "size 10^400": (("runs", 0, "artifacts", 0, "size_bytes"), 10**400, "size_bytes must be"),
    "providers a string": (("runs", 0, "artifacts", 0, "providers"), "CPU", "must be an array"),
    "power a list": (("runs", 0, "power"), [], "runs[0].power must be an object"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_shape_names_the_field(tmp_path: Path, case: str) -> None:
    path, value, message = WRONG[case]
    data = copy.deepcopy(SAMPLE)
    if value is None and path[-1] in ("runs", "name"):
        del _get(data, path[:-1])[path[-1]]
    else:
        _set(data, path, value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(EdgerunError) as info:
        read_results(bad)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"\xff{}", "is not UTF-8 text"), (b"[" * 100_000, "is not JSON edgerun can read")],
)
def test_unreadable_results_file(tmp_path: Path, raw: bytes, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(raw)
    with pytest.raises(EdgerunError, match=message):
        read_results(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=10,
)
DELETE = object()
LEAVES = [p for p in _leaves(SAMPLE) if p and p[0] == "runs"]
# Every prefix of a leaf path is a place an edit can hit: a whole run, an artifact, a summary.
PLACES = sorted({p[:n] for p in LEAVES for n in range(1, len(p) + 1)}, key=repr)
edits = st.lists(
    st.tuples(st.sampled_from(PLACES), json_values | st.just(DELETE) | st.just(HOSTILE)),
    min_size=1,
    max_size=4,
)


@FUZZ
@hypothesis.given(edits)
def test_fuzz_results_loader_and_renderers(changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = copy.deepcopy(SAMPLE)
    for path, value in changes:
        try:
            parent = _get(data, path[:-1])
            if value is DELETE:
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this place
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.json"
        path.write_text(json.dumps(data))
        try:
            _render_everything(path)
        except EdgerunError as exc:
            assert "\n" not in str(exc)


def _render_everything(path: Path) -> None:
    table, runs = load([path, path])
    base = pick_baseline(table, None)
    add_ratios(table, base)
    to_csv(table)
    to_markdown(table)
    print_rows(table, runs, "t", console=Console(file=io.StringIO(), width=120))
    page = to_html(table, runs, base, charts=False)
    assert "<script" not in page
