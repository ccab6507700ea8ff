"""What an export measures and shows: the peak RSS of each stage (its live progress line is
edgerun.core.progress) and the closing table (format, result, size, bits/w, PPL ×, KL, probe, time)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.core.progress import (  # the stage hooks live in edgerun.core.progress
    StageDetail,
    StageHook,
)


@contextlib.contextmanager
def no_stage(name: str) -> Iterator[StageDetail]:
    """The stage hook used without progress output."""
    yield _ignore


def _ignore(detail: str) -> None:
    return None


def measured(hook: StageHook, record: list[dict[str, Any]]) -> StageHook:
    """`hook`, and each stage's wall time and peak RSS appended to `record` as it ends
    ({"stage", "wall_s", "peak_rss_bytes"}: the stage cost the memory estimate is fitted to)."""
    from edgerun.bench.memory import PeakRss

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[StageDetail]:
        start = time.perf_counter()
        with PeakRss(interval_s=0.05) as rss, hook(name) as detail:
            yield detail
        wall = round(time.perf_counter() - start, 3)
        record.append({"stage": name, "wall_s": wall, "peak_rss_bytes": rss.peak})

    return stage


def artifact_bytes(path: Path | None) -> int | None:
    """Total size of the files in an artifact directory."""
    if path is None or not path.is_dir():
        return None
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def model_size(artifact: Path, model_file: str, checkpoint: Path) -> dict[str, Any]:
    """The manifest's `size`: bytes of the model files (`model_file` and its external data, not
    tokenizer or config), the source's parameter count, and bits per weight (the two divided;
    the same definition for ONNX and GGUF, so quantizations compare by it)."""
    from edgerun.core.errors import EdgerunError
    from edgerun.sources.describe import count_parameters

    stem = Path(model_file).name
    model_bytes = sum(
        f.stat().st_size for f in artifact.iterdir() if f.is_file() and f.name.startswith(stem)
    )
    try:
        params = count_parameters(checkpoint)[0]
    except EdgerunError:  # a damaged header: the size is still reported, bits per weight not
        params = None
    return {
        "model_bytes": model_bytes,
        "parameters": params,
        "bits_per_weight": round(model_bytes * 8 / params, 3) if params else None,
    }


#: The closing table's columns, most wanted first (edgerun.bench.render.print_table leaves out
#: from the end what does not fit the terminal, and names it).
COLUMNS = [
    ("format", "format"),
    ("status", "result"),
    ("size", "size"),
    ("bits_per_weight", "bits/w"),
    ("ppl_ratio", "PPL×"),
    ("mean_kl", "KL"),
    ("probe", "ms/tok"),
    ("time", "time"),
]
LABELS = ("format", "status")
NOTE = (
    "PPL×, KL: perplexity ratio and mean KL against the fp32 reference (top-1 in --json);"
    " ms/tok: a 32-token decode probe on this machine, not a benchmark"
)


def result_rows(results: list[Any]) -> list[dict[str, str]]:
    """One row of display text per export result (ExportResult objects), keyed as COLUMNS."""
    from edgerun.sources.describe import human_bytes

    rows = []
    for r in results:
        v = r.validation or {}
        manifest = r.manifest or {}
        rows.append(
            {
                "format": r.format,
                "status": r.status,
                "size": human_bytes(r.size_bytes),
                "bits_per_weight": _num(
                    (manifest.get("size") or {}).get("bits_per_weight"), "{:.2f}"
                ),
                "ppl_ratio": _num(v.get("ppl_ratio"), "{:.4g}"),
                "mean_kl": _num(v.get("mean_kl"), "{:.4f}"),
                "probe": _num((manifest.get("probe") or {}).get("decode_ms_per_token"), "{:.2f}"),
                "time": f"{r.wall_s:.0f} s" if r.wall_s is not None else "-",
            }
        )
    return rows


def print_results(results: list[Any], console: Any = None, wide: bool = False) -> None:
    """The closing table, as wide as the terminal allows (a number is never cut), and its note."""
    from rich.text import Text

    from edgerun.bench.render import print_table, table_console

    console = console or table_console()
    title = "edgerun export"
    print_table(result_rows(results), title, COLUMNS, console, wide, LABELS, "--json has them")
    console.print(Text(NOTE), soft_wrap=False)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
