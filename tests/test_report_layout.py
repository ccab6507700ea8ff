"""The HTML report's joined table as a person sees it: every value of a result row is on the page
(the main columns, each ratio under its value, the rest in the row's details), and in a real
browser (headless Chromium, where installed) the table fits a 900 px and a 1400 px window
without horizontal scrolling, and a row's details open under it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgerun.bench.compare import add_ratios
from edgerun.bench.report import to_html
from edgerun.bench.report_views import HTML_COLUMNS, details

DEVICES = ["jetson-orin-nano", "raspberry-pi-5-kitchen", "x86-desktop"]
ARTIFACTS = ["gguf-q4_k_m", "gguf-q8_0", "onnx-int4-recipe-mixed"]


def _row(device: int, artifact: int, prompt: int) -> dict[str, Any]:
    """A result row with wide numbers: four-digit prefill rates, spreads of 3 significant
    digits, a five-digit TTFT."""
    decode = 31.7 * (device + 1) + artifact
    row: dict[str, Any] = {
        "device": DEVICES[device],
        "profile": "rpi5",
        "artifact": ARTIFACTS[artifact],
        "backend": "onnxruntime-genai" if artifact == 2 else "llamacpp",
        "threads": 4,
        "providers": "CPUExecutionProvider",
        "prompt_tokens": prompt,
        "decode_tok_s": decode,
        "prefill_tok_s": 9875.4 / (device + 1),
        "ttft_ms": 12345.6 / (artifact + 1),
        "peak_rss_mb": 1234.5,
        "j_per_token": 0.2219,
        "size_mb": 145.0,
        "mean_kl": 0.14812,
        "ppl_ratio": 1.0312,
        "top1_agreement": 0.9312,
        "latency_p50_ms": 15.1,
        "latency_p99_ms": 19.7,
        "energy_method": "rapl package counter",
    }
    for key in ("decode_tok_s", "prefill_tok_s", "ttft_ms"):
        row.update({f"{key}_min": row[key] * 0.9, f"{key}_max": row[key] * 1.1})
        row.update({f"{key}_stdev": row[key] * 0.123, f"{key}_n": 5})
    return row


def _table() -> list[dict[str, Any]]:
    table = [_row(d, a, p) for d in range(3) for a in range(3) for p in (128, 1024)]
    for i, row in enumerate(table, 1):
        row["row"] = i
    add_ratios(table, table[0])
    return table


def _page() -> str:
    runs = [{"device": {"name": d}, "created": "2026-12-07T10:00:00Z"} for d in DEVICES]
    return to_html(_table(), runs, _table()[0], charts=False)


def test_every_value_of_a_row_is_on_the_page() -> None:
    """The main row holds the medians with their stdev and, under each, its ratio; the details
    row under it the min-max ranges and the columns the main table leaves out."""
    page = _page()
    table = _table()
    row = table[4]  # jetson-orin-nano, onnx-int4-recipe-mixed, prompt 128
    pairs = r'<tr class="main[^"]*">(.*?)</tr>\s*<tr class="more[^"]*">(.*?)</tr>'
    main, more = re.findall(pairs, page)[4]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", main)
    assert len(cells) == len(HTML_COLUMNS) == 12
    assert "<summary>5</summary>" in cells[0]
    assert cells[2] == "onnx-int4-recipe-mixed<small>onnxruntime-genai</small>"
    assert cells[4] == "33.7 ±4.1<small>× ≈1.063</small>"  # the two ranges overlap
    assert cells[5] == "9875 ±1215<small>× ≈1.000</small>"  # four digits: no decimals
    assert cells[6] == "4115 ±506<small>× 0.333</small>"
    assert cells[9:] == ["145.0", "0.148", "1.031"]
    info = " · ".join(details(row))
    assert info.startswith(
        "decode tok/s 30.3–37.1 over 5 reps · prefill tok/s 8888–10863 over 5 reps · "
        "TTFT ms 3704–4527 over 5 reps · profile rpi5 · threads 4"
    )
    for part in ("top-1 0.931", "p50 ms 15.1", "p99 ms 19.7", "energy rapl package counter"):
        assert part in info
    assert info in more.replace("&amp;", "&")


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("chrome")

# Measures the page once laid out: the widths, and whether a row's details row shows when it
# is opened (and only then).
PROBE = """<script>
const wrap = document.querySelector('.wrap'), table = wrap.querySelector('table');
const more = [...table.querySelectorAll('tr.more')], shown = r => getComputedStyle(r).display;
const closed = more.map(shown);
const first = table.querySelector('details');
if (first) first.open = true;
const out = {page: document.documentElement.scrollWidth, table: table.scrollWidth,
  wrap: wrap.clientWidth, closed: closed, opened: more.map(shown)};
document.body.insertAdjacentHTML('beforeend', '<pre id="probe">' + JSON.stringify(out) + '</pre>');
</script></body>"""


def _laid_out(page: str, width: int, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / f"report-{width}.html"
    path.write_text(page.replace("</body>", PROBE), encoding="utf-8")
    assert BROWSER is not None
    args = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    args += [f"--window-size={width},1200", "--dump-dom", path.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.findall(r'<pre id="probe">(\{.*?)</pre>', dom)  # not the script's own text
    assert found, dom[-2000:]
    return dict(json.loads(found[-1]))


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (apt install chromium)")
@pytest.mark.parametrize("width", [900, 1400])
def test_the_table_reads_without_scrolling(width: int, tmp_path: Path) -> None:
    page = _page()
    seen = _laid_out(page, width, tmp_path)
    assert seen["page"] <= width, seen
    assert seen["table"] <= seen["wrap"], seen  # no horizontal scroll bar on the table
    assert set(seen["closed"]) == {"none"}
    assert seen["opened"][0] == "table-row" and set(seen["opened"][1:]) == {"none"}
