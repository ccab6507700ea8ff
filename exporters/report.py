"""What an export shows and measures: rich progress per stage, the peak RSS of a stage, and the
closing table (format, size, PPL ratio, KL, top-1, pass/fail, time)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# A stage yields a callable that shows a detail line ("12 tensors") while the stage runs.
StageDetail = Callable[[str], None]
StageHook = Callable[[str], contextlib.AbstractContextManager[StageDetail]]


def stage_printer(console: Any) -> StageHook:
    """A stage hook: a spinner while the stage runs, then `✓ name (seconds)` on the console."""

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[StageDetail]:
        start = time.perf_counter()
        with console.status(f"{name} ...") as status:
            yield lambda detail: status.update(f"{name}: {detail}")
        console.print(f"  [green]✓[/] {name} ({time.perf_counter() - start:.1f} s)")

    return stage


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
    from edgerun.describe import count_parameters
    from edgerun.errors import EdgerunError

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


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def results_table(results: list[Any]) -> Any:
    """A rich Table of export results (ExportResult objects)."""
    from rich import box
    from rich.table import Table

    # No vertical rules, so that nine columns fit an 80-column terminal without wrapping.
    table = Table(
        title="edgerun export",
        caption="PPL×, KL: perplexity ratio and mean KL against the fp32 reference (top-1 in"
        " --json); ms/tok: a 32-token decode probe on this machine, not a benchmark",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    for name, justify in [
        ("format", "left"),
        ("size", "right"),
        ("bits/w", "right"),
        ("PPL×", "right"),
        ("KL", "right"),
        ("ms/tok", "right"),
        ("result", "left"),
        ("time", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in results:
        v = r.validation or {}
        manifest = r.manifest or {}
        probe = manifest.get("probe") or {}
        table.add_row(
            r.format,
            human_bytes(r.size_bytes),
            _num((manifest.get("size") or {}).get("bits_per_weight"), "{:.2f}"),
            _num(v.get("ppl_ratio"), "{:.4g}"),
            _num(v.get("mean_kl"), "{:.4f}"),
            _num(probe.get("decode_ms_per_token"), "{:.2f}"),
            r.status,
            f"{r.wall_s:.0f} s" if r.wall_s is not None else "-",
        )
    return table


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
