"""Terminal rendering of bench rows with rich, plus the notes that keep energy numbers honest."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from edgerun.bench.busy import busy_warning
from edgerun.bench.results import cell, unsteady

#: The terminal's columns, most wanted first: what does not fit the terminal is left out from the
#: end (fit_columns); the files keep every column (results.COLUMNS).
TERMINAL = [
    ("artifact", "artifact"),
    ("backend", "backend"),
    ("prompt_tokens", "prompt"),
    ("decode_tok_s", "decode tok/s"),
    ("ttft_ms", "TTFT ms"),
    ("prefill_tok_s", "prefill tok/s"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("j_per_token", "J/token"),
    ("size_mb", "size MiB"),
    ("ppl_ratio", "PPL ratio"),
    ("top1_agreement", "top-1"),
]


LABELS = ("artifact", "backend", "device", "profile", "energy_method")
LABEL_WIDTH = 28  # a longer label is cut (with …) before a number column is dropped for it


def table(
    rows: list[dict[str, Any]],
    title: str,
    columns: list[tuple[str, str]] = TERMINAL,
    labels: tuple[str, ...] = LABELS,
) -> Table:
    """A rich Table of `rows`. A number column is as wide as its widest cell, so a number is never
    cut; its header wraps at spaces instead; a `labels` column (left-aligned text) is cut at
    LABEL_WIDTH. Pick the columns that fit with `fit_columns`."""
    t = Table(
        title=Text(title),
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
    )
    for key, header in columns:
        # Fixed widths: rich never squeezes a fixed column, and its header wraps inside it.
        widest = max([cell_len(cell(r, key)) for r in rows] + [1])
        if key in labels:
            widest = min(max(widest, cell_len(header)), LABEL_WIDTH)
            t.add_column(header, justify="left", no_wrap=True, width=widest)
        else:
            longest_word = max(cell_len(word) for word in header.split())
            t.add_column(header, justify="right", width=max(widest, longest_word))
    for row in rows:
        # Text, not str: a '[' in a shared results file is data, not rich markup.
        t.add_row(*(Text(cell(row, k)) for k, _ in columns))
    return t


def fit_columns(
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    width: int | None,
    labels: tuple[str, ...] = LABELS,
) -> tuple[list[tuple[str, str]], list[str]]:
    """(the columns that fit in `width` terminal columns, taken in order while they fit, and the
    headers of those left out). `width` None: all of them."""
    if width is None:
        return columns, []
    shown: list[tuple[str, str]] = []
    hidden: list[str] = []
    for column in columns:
        trial = [c for c in columns if c in shown or c == column]
        if not shown or _narrowest(rows, trial, labels) <= width:
            shown.append(column)
        else:
            hidden.append(column[1])
    return shown, hidden


def _narrowest(
    rows: list[dict[str, Any]], columns: list[tuple[str, str]], labels: tuple[str, ...]
) -> int:
    """The width the table of `columns` takes (its columns have fixed widths, see `table`):
    rendered, so padding and dividers count exactly as rich draws them."""
    buffer = io.StringIO()
    Console(file=buffer, width=10_000).print(table(rows, "", columns, labels))
    return max(cell_len(line) for line in buffer.getvalue().splitlines())


def print_table(
    rows: list[dict[str, Any]],
    title: str,
    columns: list[tuple[str, str]],
    console: Console | None = None,
    wide: bool = False,
    labels: tuple[str, ...] = LABELS,
    more: str = "--wide shows them",
) -> list[tuple[str, str]]:
    """Print the table of the `columns` that fit the terminal (all of them with `wide`, or when
    piped without COLUMNS set) and a line naming the ones left out; returns those shown. A
    number is never cut: a column that does not fit is left out whole; `more` says where to
    see it."""
    console = console or table_console()
    width = (
        None if wide or (not console.is_terminal and "COLUMNS" not in os.environ) else console.width
    )
    shown, hidden = fit_columns(rows, columns, width, labels)
    t = table(rows, title, shown, labels)
    if width is None:  # as wide as it needs: never wrapped by the console
        needed = Measurement.get(console, console.options.update_width(10_000), t).maximum
        console.width = max(console.width, needed, len(title))
    console.print(t)
    if hidden:
        console.print(Text(f"not shown at {width} columns: {', '.join(hidden)} ({more})"))
    return shown


def energy_notes(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run saying where energy numbers come from, or why there are none."""
    notes = []
    for run in runs:
        p = run.get("power") or {}
        if p.get("estimate"):
            notes.append(f"energy: ESTIMATE, {p['source']}")
        elif p.get("available"):
            idle = (
                f", idle {p['idle_watts']:.2f} W subtracted for net"
                if p.get("idle_watts") is not None
                else ""
            )
            bound = " (a lower bound)" if p.get("lower_bound") else ""
            notes.append(f"energy: {p['source']} [scope {p['scope']}, {p['method']}]{bound}{idle}")
            if p.get("error"):
                notes.append(f"energy: the meter failed during the run: {p['error']}")
        else:
            hint = f" ({p['hint']})" if p.get("hint") else ""
            notes.append(f"energy: null: {p.get('reason')}{hint}")
    return notes


def print_rows(
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    title: str,
    console: Console | None = None,
    columns: list[tuple[str, str]] = TERMINAL,
    wide: bool = False,
) -> None:
    """Print the table of the `columns` that fit the terminal (print_table), the energy and
    unsteady-run notes. Numbers are never cut."""
    console = console or table_console()
    shown = print_table(rows, title, columns, console, wide)
    for note in dict.fromkeys(energy_notes(runs)):
        console.print(Text(note), highlight=False, soft_wrap=True)
    shaky = unsteady(rows)
    for note in shaky:
        console.print(Text(note), highlight=False, soft_wrap=True)
    if shaky:
        console.print(Text("(unsteady: the machine was busy or the run unstable; re-run it idle)"))
    for run in runs:
        warning = busy_warning(run.get("busy"), f"run {run.get('id') or ''}".strip())
        if warning:
            console.print(Text(f"warning: {warning}"), highlight=False, soft_wrap=True)
    if any(row.get(f"{k}_overlap") for row in rows for k, _ in shown):
        console.print(Text("≈: the two rows' ranges over their repetitions overlap: may be noise"))


def speed_lines(rows: list[dict[str, Any]]) -> list[str]:
    """llama-bench's summary, one line per artifact: prefill tok/s per prompt length (ppN) and
    decode tok/s after the shortest prompt (tgN), each median ± stdev over the repetitions,
    e.g. `q4 (llamacpp, 2 threads): pp128 812.3 ± 4.1 | tg64 91.2 ± 0.80 tok/s`."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("device"), row["artifact"], row.get("backend")), []).append(row)
    lines = []
    for (_, name, backend), group in groups.items():
        group.sort(key=lambda r: r["prompt_tokens"])
        parts = [f"pp{r['prompt_tokens']} {_pm(r, 'prefill_tok_s')}" for r in group]
        parts.append(f"tg{group[0].get('gen_tokens')} {_pm(group[0], 'decode_tok_s')}")
        threads = group[0].get("threads")
        lines.append(f"{name} ({backend}, {threads} threads): {' | '.join(parts)} tok/s")
    return lines


def _pm(row: dict[str, Any], key: str) -> str:
    """A median with its stdev written as llama-bench does (`91.2 ± 0.80`)."""
    return cell(row, key).replace(" ±", " ± ")


def table_console() -> Console:
    """The terminal's console; piped output (a file, a CI log) gets plain text: no colour, and
    the width of COLUMNS when set, else as wide as the table needs."""
    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() else 80, no_color=True)


@contextmanager
def progress_bar(console: Console, total: int) -> Iterator[Callable[[str], None]]:
    """A rich progress bar of `total` steps with the time elapsed and remaining (terminal only:
    none in logs and pipes); yields the `progress` callback of edgerun.bench.run, which advances
    it one step per message."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("bench", total=total)

        def step(message: str) -> None:
            progress.update(task, description=message, advance=1)

        yield step
